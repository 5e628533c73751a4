"""Pipeline configs validate up front; runs write results atomically and resume."""

from __future__ import annotations

import json

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
    with pytest.raises(ModelLoadError):
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
