"""Pipeline configs validate up front; runs write results atomically and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from arithinterp.errors import ArithInterpError, ConfigError, ModelLoadError
from arithinterp.pipeline import load_config, run_pipeline
from arithinterp.pipeline.cli import app
from arithinterp.results import Result


def _write(tmp_path, cfg) -> str:
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture
def cfg(tiny_hf_dirs):
    return {
        "name": "tiny",
        "model": str(tiny_hf_dirs["gpt2"]),
        "task": {"operation": "add", "digits": 2, "format": "fixed", "n": 16, "seed": 1},
        "steps": [{"kind": "evaluate"}, {"kind": "logit_lens", "k": 3}],
    }


def test_error_names_the_yaml_path(tmp_path, cfg):
    cfg["steps"][1]["k"] = 0
    cfg["steps"][0]["bogus"] = 1
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, cfg))
    msg = str(err.value)
    assert "steps[1].logit_lens.k" in msg or "steps[1].k" in msg
    assert "bogus" in msg


def test_unknown_step_kind_lists_valid_kinds(tmp_path, cfg):
    cfg["steps"] = [{"kind": "telepathy"}]
    with pytest.raises(ConfigError, match="evaluate"):
        load_config(_write(tmp_path, cfg))


def test_missing_model_fails_before_any_work(tmp_path, cfg):
    cfg["model"] = str(tmp_path / "nowhere")
    config = load_config(_write(tmp_path, cfg))
    with pytest.raises(ModelLoadError, match=r"^model: no model directory"):
        run_pipeline(config, runs_dir=tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists()


def test_overrides(tmp_path, cfg):
    config = load_config(_write(tmp_path, cfg), ["task.n=8", "steps.1.k=2"])
    assert config.task.n == 8 and config.steps[1].k == 2
    with pytest.raises(ConfigError):
        load_config(_write(tmp_path, cfg), ["task.n"])


def test_run_writes_results_report_and_resumes(tmp_path, cfg):
    config = load_config(_write(tmp_path, cfg))
    first = run_pipeline(config, runs_dir=tmp_path / "runs", progress=False)
    run_dir = tmp_path / "runs" / "tiny"
    assert (run_dir / "report.html").is_file()
    for name in ("evaluate", "logit_lens"):
        record = json.loads((run_dir / name / "step.json").read_text())
        assert record["fingerprint"] == config.fingerprint(config.step_names().index(name))
        loaded = Result.load(run_dir / name)
        assert loaded.values.equals(first.results[name].values)
    # A step without its completion marker is recomputed; a complete one is skipped.
    (run_dir / "logit_lens" / "step.json").unlink()
    second = run_pipeline(config, runs_dir=tmp_path / "runs", progress=False)
    assert second.skipped == ["evaluate"]
    assert second.results["logit_lens"].values.equals(first.results["logit_lens"].values)


def test_cli_reports_user_errors_cleanly(tmp_path, cfg):
    cfg["model"] = "zoo:no-such-model"
    result = CliRunner().invoke(app, ["run", _write(tmp_path, cfg), "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "no-such-model" in result.output
    assert issubclass(ModelLoadError, ArithInterpError)


def test_causal_steps_need_pairs_and_run(tmp_path, cfg):
    cfg["steps"] = [{"kind": "patching", "sites": "resid_pre", "n_boot": 20},
                    {"kind": "attribution", "sites": "attn_head", "n_boot": 20}]
    with pytest.raises(ConfigError, match=r"pairs: required by steps\[0\] \(patching\)"):
        load_config(_write(tmp_path, cfg))
    cfg["pairs"] = {"kind": "operand_a"}
    config = load_config(_write(tmp_path, cfg))
    summary = run_pipeline(config, runs_dir=tmp_path / "runs", progress=False)
    patching = summary.results["patching"]
    assert patching.values.dims == ("layer", "pos")
    assert patching.meta.options["kind"] == "resid_pre"
    # The step passes its options through unchanged: the same call by hand gives the same numbers.
    from arithinterp.methods import patch_activations
    from arithinterp.models import load_model
    from arithinterp.tasks import generate, make_pairs

    by_hand = patch_activations(load_model(config.model), make_pairs(generate(config.task), "operand_a"),
                                kind="resid_pre", n_boot=20, progress=False)
    assert patching.values.equals(by_hand.values)
    assert summary.results["attribution"].values.dims == ("layer", "head", "pos")
    assert "patching" in (tmp_path / "runs" / "tiny" / "report.html").read_text()


def test_unknown_site_kind_is_a_config_error(tmp_path, cfg):
    cfg["pairs"] = {"kind": "operand_a"}
    cfg["steps"] = [{"kind": "patching", "sites": "residual"}]
    with pytest.raises(ConfigError, match=r"steps\[0\]\.sites"):
        load_config(_write(tmp_path, cfg))


# -- several tasks, every step kind validated up front ------------------------------------------

ZOO_ADD = {
    "name": "zoo-add",
    "model": "zoo:add-2d-tok",
    "tasks": {
        "grid": {"operation": "add", "operand_range": [0, 99], "format": "plain", "n": 48, "seed": 0},
        "other": {"operation": "add", "operand_range": [0, 99], "format": "plain", "n": 48, "seed": 5},
    },
    "pairs": {"kind": "operand_a"},
    "steps": [
        {"kind": "fourier", "analyses": ["embedding", "unembedding", "filter"]},
        {"kind": "probes", "task": "other", "targets": ["SC_0", "SA_1"], "n_boot": 10},
        {"kind": "circuit", "answer": "single", "target": 0.9},
        {"kind": "report", "methods": ["dla"], "n": 16},
    ],
}


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c["steps"][1].update(task="nope"), r"steps\[1\]\.task: no task named 'nope'"),
    (lambda c: c["steps"][1].update(targets=["SC_9"]), r"steps\[1\]\.targets: \['SC_9'\] are not annotations"),
    (lambda c: c["steps"][1].update(control_by="digits"), r"steps\[1\]\.control_by"),
    (lambda c: c["steps"].append({"kind": "fourier", "analyses": ["key_frequencies"]}),
     r"steps\[4\]\.analyses: \['key_frequencies'\] need a modadd task"),
    (lambda c: c["steps"].append({"kind": "heuristics", "task": "digits"}) or c["tasks"].update(
        digits={"operation": "add", "digits": 2}), r"steps\[4\]\.task: heuristics needs the whole operand grid"),
    (lambda c: c["steps"][0].update(analyses=["embedding", "embedding"]), r"steps\[0\]\.analyses: .*repeat"),
    (lambda c: c["steps"][2].update(components=["mlp_in"]), r"steps\[2\]\.components\[0\]"),
    (lambda c: c["steps"][3].update(methods=["telepathy"]), r"steps\[3\]\.methods"),
    (lambda c: c.update(task={"operation": "add"}), "exactly one of `task:`"),
    (lambda c: c["steps"][0].update(kind="fourrier"), "valid kinds: evaluate, .*fourier"),
])
def test_every_step_is_validated_with_its_yaml_path(tmp_path, edit, message):
    cfg = json.loads(json.dumps(ZOO_ADD))
    edit(cfg)
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, cfg))


def test_checks_against_the_model_run_before_any_step(tmp_path):
    from arithinterp.errors import SiteError, TokenizationError

    cfg = json.loads(json.dumps(ZOO_ADD))
    cfg["steps"] = [{"kind": "evaluate"}, {"kind": "probes", "targets": ["SC_0"], "sites": [
        {"kind": "resid_mid", "layer": 3}]}]
    with pytest.raises(SiteError, match=r"steps\[1\] \(probes\): sites: 3 is not a layer"):
        run_pipeline(load_config(_write(tmp_path, cfg)), runs_dir=tmp_path / "runs", progress=False)
    cfg["steps"][1] = {"kind": "probes", "targets": ["SC_0"], "control_by": ["a_digit_0", "nope"]}
    with pytest.raises(ConfigError, match=r"steps\[1\] \(probes\): control_by: \['nope'\]"):
        run_pipeline(load_config(_write(tmp_path, cfg)), runs_dir=tmp_path / "runs", progress=False)
    cfg["tasks"]["grid"] = {"operation": "add", "digits": 3, "format": "plain", "n": 8}  # 3-digit answers
    with pytest.raises(TokenizationError, match=r"^tasks\.grid: "):
        run_pipeline(load_config(_write(tmp_path, cfg)), runs_dir=tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists()


def test_steps_pass_their_options_through(tmp_path):
    """Each step's saved result equals the method called by hand with the same options."""
    from arithinterp.methods import (
        discover_circuit,
        embedding_spectrum,
        fit_probes,
        fourier_filter_ablation,
        number_token_ids,
    )
    from arithinterp.models import load_model
    from arithinterp.reports import build_report
    from arithinterp.tasks import TaskSpec, generate, make_pairs, tokenize

    config = load_config(_write(tmp_path, ZOO_ADD))
    result = CliRunner().invoke(app, ["run", _write(tmp_path, ZOO_ADD), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "zoo-add"
    model = load_model("zoo:add-2d-tok")
    grid, other = (generate(TaskSpec(**ZOO_ADD["tasks"][k])) for k in ("grid", "other"))

    numbers, ids = number_token_ids(model)
    by_hand = embedding_spectrum(model, ids[:100].tolist())  # W_E over the task's operands 0..99
    assert Result.load(run_dir / "fourier" / "embedding").values.equals(by_hand.values)
    by_hand = embedding_spectrum(model, ids.tolist(), matrix="W_U")
    assert Result.load(run_dir / "fourier" / "unembedding").values.equals(by_hand.values)
    tk = tokenize(grid, model.tokenizer, answer="single")
    by_hand = fourier_filter_ablation(model, tk.prompt_tokens, tk.answer_tokens[:, 0], numbers=ids.tolist())
    assert Result.load(run_dir / "fourier" / "filter").values.equals(by_hand.values)

    probes = Result.load(run_dir / "probes")
    assert probes.values.equals(fit_probes(model, other, ["SC_0", "SA_1"], n_boot=10, progress=False).values)
    assert json.loads((run_dir / "probes" / "step.json").read_text())["task_name"] == "other"

    circuit = Result.load(run_dir / "circuit")
    by_hand = discover_circuit(model, make_pairs(grid, "operand_a"), answer="single", progress=False)
    assert circuit.circuit == by_hand.circuit and circuit.values.equals(by_hand.values)

    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    by_hand = build_report(model, TaskSpec(**ZOO_ADD["tasks"]["grid"]), n=16, methods=["dla"], progress=False)
    assert summary["top_components"] == by_hand.summary["top_components"]
    assert (run_dir / "report" / "report.html").is_file()
    # The CLI ends with where the reports are and the circuit's components.
    assert f"attribution report: {run_dir / 'report' / 'report.html'}" in result.output
    assert f"top circuit components: {', '.join(circuit.circuit)}" in result.output
    assert config.step_names() == ["fourier", "probes", "circuit", "report"]


def test_grid_and_lens_steps_with_parts_resume(tmp_path):
    """Heuristics (K/KV maps on a 10 x 10 grid), number lens and a tuned lens: saved in parts,
    equal to the methods called by hand, and loaded (not recomputed) on a rerun."""
    from arithinterp.methods import (
        TunedLens,
        classify_neurons,
        heuristic_knockout,
        neuron_maps,
        number_lens,
        train_tuned_lens,
        tuned_lens,
    )
    from arithinterp.models import load_model
    from arithinterp.tasks import TaskSpec, generate

    task = {"operation": "add", "operand_range": [0, 9], "format": "plain", "n": 40, "seed": 2}
    cfg = {"name": "parts", "model": "zoo:add-2d-tok", "task": task, "report": False, "steps": [
        {"kind": "heuristics", "knockout": 1, "knockout_n": 10},
        {"kind": "number_lens"},
        {"kind": "tuned_lens", "train_steps": 15, "train_fraction": 0.5},
    ]}
    config = load_config(_write(tmp_path, cfg))
    first = run_pipeline(config, runs_dir=tmp_path / "runs", progress=False)
    assert sorted(first.results) == ["heuristics/classification", "heuristics/knockout", "heuristics/maps",
                                     "number_lens", "tuned_lens/kl", "tuned_lens/tuned_lens"]
    assert isinstance(first.artifacts["tuned_lens/lens"], TunedLens)

    model, spec = load_model("zoo:add-2d-tok"), TaskSpec(**task)
    classes = classify_neurons(neuron_maps(model, spec, layer=0))
    assert first.results["heuristics/classification"].values.equals(classes.values)
    top = str(classes.extras["implements"].sum("neuron").to_series()
              .sort_values(ascending=False, kind="stable").index[0])
    knockout = heuristic_knockout(model, spec, classes, top, n=10, seed=0)
    saved = first.results["heuristics/knockout"].values.sel({"class": top})
    np.testing.assert_array_equal(saved.values, knockout.values.values)
    prompts = generate(spec)
    assert first.results["number_lens"].values.equals(number_lens(model, prompts, progress=False).values)
    lens = train_tuned_lens(model, prompts[:20], steps=15, seed=0, progress=False)
    assert first.results["tuned_lens/tuned_lens"].values.equals(
        tuned_lens(model, prompts[20:], lens, progress=False).values)

    second = run_pipeline(config, runs_dir=tmp_path / "runs", progress=False)
    assert second.skipped == ["heuristics", "number_lens", "tuned_lens"]
    for key, result in first.results.items():
        assert second.results[key].values.equals(result.values)
    assert isinstance(second.artifacts["tuned_lens/lens"], TunedLens)
