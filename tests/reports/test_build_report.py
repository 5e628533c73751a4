"""build_report is an aggregation: every table cell equals what its method returns when called directly.

Also: the report directory round-trips, methods that do not apply are skipped with a
reason, bad input fails before any forward pass, and on the hand-set adder of
tests/methods/test_circuits.py the planted components top the tables and form the circuit.
"""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd
import pytest

from arithinterp.errors import ArithInterpError, ConfigError, MethodError, TaskError
from arithinterp.methods import (
    attribution_patch,
    classify_neurons,
    direct_logit_attribution,
    discover_circuit,
    fit_probes,
    mediate,
    neuron_maps,
    patch_activations,
)
from arithinterp.methods.attribution_rules import RECOMMENDED, RECOMMENDED_IG_STEPS
from arithinterp.methods.fourier import key_frequencies_from_activations
from arithinterp.methods.grid import operand_grid
from arithinterp.methods.mediation import IE_SANITY_BOUND
from arithinterp.methods.operand_maps import REPORT_MAP_HEADS, operand_maps
from arithinterp.models import load_model
from arithinterp.planted.and_model import CARRY
from arithinterp.planted.and_model import build_and_model as build_planted
from arithinterp.reports import AttributionReport, build_report
from arithinterp.reports.build import circuit_granularity
from arithinterp.reports.tables import HEAD_COLUMNS, NEURON_COLUMNS, probe_evidence
from arithinterp.tasks import TaskSpec, generate, make_pairs
from tests.conftest import CountingRun, scaled_variant

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

# One-digit results are one token for the digit tokenizer, so every method applies.
SMALL = TaskSpec(operation="add", operand_range=(0, 4), format="plain")


@pytest.fixture(scope="module")
def tiny(tiny_hf_dirs, tmp_path_factory):
    path = scaled_variant(tiny_hf_dirs["gpt2"], tmp_path_factory.mktemp("scaled") / "gpt2", scale=4.0)
    return load_model(str(path))


@pytest.fixture(scope="module")
def report(tiny):
    return build_report(tiny, SMALL, n=24, seed=3, progress=False)


def row(frame: pd.DataFrame, label: str) -> pd.Series:
    return frame.set_index("component").loc[label]


def test_tables_equal_the_methods_called_directly(tiny, report):
    assert report.summary["methods"] == ["patching", "attribution", "mediation", "dla", "probes",
                                         "causal_variables", "fourier", "heuristics", "logit_lens",
                                         "operand_maps", "circuit", "attention"]
    assert report.summary["skipped"] == {}
    assert list(report.heads.columns) == list(HEAD_COLUMNS)
    assert list(report.neurons.columns) == list(NEURON_COLUMNS)
    s = tiny.shape
    assert len(report.heads) == s.n_layers * s.n_heads and len(report.neurons) == s.n_layers * s.d_mlp

    prompts = generate(SMALL.model_copy(update={"n": 24, "seed": 3}))
    pairs = make_pairs(prompts, "random", seed=3, on_impossible="drop")
    common = dict(per_position=False, answer="single", seed=3, progress=False)
    patch_h = patch_activations(tiny, pairs, kind="attn_head", **common)
    patch_n = patch_activations(tiny, pairs, kind="mlp_post", **common)
    method, freeze_norm = RECOMMENDED  # the report's attribution column uses the best-calibrated method
    best = dict(method=method, freeze_norm=freeze_norm, ig_steps=RECOMMENDED_IG_STEPS, **common)
    atp_h = attribution_patch(tiny, pairs, kind="attn_head", **best)
    atp_n = attribution_patch(tiny, pairs, kind="mlp_post", **best)
    med = mediate(tiny, pairs, heads=True, **common)
    dla = direct_logit_attribution(tiny, pairs.clean, against=pairs.corrupt)  # like patching: logit difference
    for (layer, head) in [(0, 0), (0, 3), (1, 2)]:
        r = row(report.heads, f"L{layer}H{head}")
        assert r["patch_effect"] == pytest.approx(float(patch_h.values.sel(layer=layer, head=head)), abs=1e-9)
        assert r["patch_ci_low"] == pytest.approx(float(patch_h.extras["ci_low"].sel(layer=layer, head=head)))
        assert r["patch_ci_high"] == pytest.approx(float(patch_h.extras["ci_high"].sel(layer=layer, head=head)))
        assert r["atp"] == pytest.approx(float(atp_h.effect.sel(layer=layer, head=head)), abs=1e-9)
        assert r["mediation_ie"] == pytest.approx(float(med.values.sel(layer=layer, head=head)), rel=1e-6)
        assert r["mediation_pd"] == pytest.approx(float(med.extras["prob_diff"].sel(layer=layer, head=head)),
                                                  rel=1e-6)
        assert r["ie_unbounded"] == (abs(r["mediation_ie"]) > IE_SANITY_BOUND)
        assert r["dla"] == pytest.approx(float(dla.heads().mean("prompt").sel(layer=layer, head=head)), abs=1e-9)
    for (layer, neuron) in [(0, 5), (1, 100)]:
        r = row(report.neurons, f"L{layer}N{neuron}")
        assert r["patch_effect"] == pytest.approx(float(patch_n.values.sel(layer=layer, neuron=neuron)), abs=1e-9)
        assert r["atp"] == pytest.approx(float(atp_n.effect.sel(layer=layer, neuron=neuron)), abs=1e-9)
        assert r["dla"] == pytest.approx(float(dla.neurons(layer).mean("prompt").sel(neuron=neuron)), abs=1e-9)

    # Rank: 1 = largest |exact patching effect|, one rank per row.
    heads = report.heads
    assert sorted(heads["rank"]) == list(range(1, len(heads) + 1))
    assert heads.iloc[0]["component"] == heads.loc[heads["patch_effect"].abs().idxmax(), "component"]
    # Mediation IE of neurons: the top neurons by |AtP| only, equal to mediate on them.
    ie = report.results["mediation_neurons"]
    chosen = [int(x) for x in ie.values.coords["neuron"].values]
    direct = mediate(tiny, pairs, neurons=chosen, **common)
    r = row(report.neurons, f"L1N{chosen[0]}")
    assert r["mediation_ie"] == pytest.approx(float(direct.values.sel(layer=1, neuron=chosen[0])), rel=1e-6)

    # The circuit is discover_circuit's.
    circuit = discover_circuit(tiny, pairs, pairs.clean, answer="single", progress=False)
    assert report.circuit.circuit == circuit.circuit
    assert report.summary["circuit"]["faithfulness"] == pytest.approx(circuit.circuit_faithfulness)
    members = set(circuit.circuit)
    assert {c for c in heads["component"] if c in members} == set(heads.loc[heads["in_circuit"] == True,  # noqa: E712
                                                                               "component"])
    # Neurons are marked only by a neuron-level circuit; this one holds heads and whole MLPs.
    assert report.summary["circuit"]["granularity"] == circuit_granularity(circuit.circuit)
    assert "neurons" not in report.summary["circuit"]["granularity"]
    assert report.neurons["in_circuit"].isna().all()

    # Operand maps: the top heads and neurons by |patching|, as operand_maps computes them.
    maps = report.results["operand_maps"]
    mapped = [str(c) for c in maps.values.coords["component"].values]
    assert mapped[:REPORT_MAP_HEADS] == list(heads["component"][:REPORT_MAP_HEADS])
    direct_maps = operand_maps(tiny, pairs.clean.spec, features=mapped)
    np.testing.assert_allclose(maps.values.values, direct_maps.values.values)
    for label, c in direct_maps.classes().items():
        table = heads if "H" in label else report.neurons
        r = row(table, label)
        assert r["operand_feature"] == f"{c['kind']}: {c['description']}"
        assert r["operand_score"] == pytest.approx(c["score"])
    unmapped = heads.loc[~heads["component"].isin(mapped), "operand_feature"]
    assert unmapped.isna().all()


def test_grid_columns_equal_fourier_heuristics_and_probes(tiny, report):
    spec = SMALL.model_copy(update={"n": 24, "seed": 3})
    maps = neuron_maps(tiny, spec, layer=1)
    heur = classify_neurons(maps)
    best = heur.values.max("class")
    for neuron in (0, 7, 31):
        r = row(report.neurons, f"L1N{neuron}")
        assert r["heuristic_score"] == pytest.approx(float(best.sel(neuron=neuron)))
        names = heur.neuron_heuristics(neuron)
        assert r["heuristic"] == (names[0] if names else "")
    # Layer 0 is not classified (heuristics run on the last MLP layer).
    assert row(report.neurons, "L0N0")["heuristic"] == "" and np.isnan(row(report.neurons, "L0N0")["heuristic_score"])

    # Fourier: the K map of each layer over the 5 x 5 grid, through the public function.
    a, *_ = operand_grid(spec)
    for layer in (0, 1):
        k_map = neuron_maps(tiny, spec, layer=layer).values.transpose("neuron", "prompt").values
        kf = key_frequencies_from_activations(__import__("torch").tensor(k_map.T.reshape(5, 5, -1)))
        for neuron in (3, 9):
            r = row(report.neurons, f"L{layer}N{neuron}")
            assert r["fourier_key_freq"] == int(kf.extras["key_freq"].sel(neuron=neuron))
            assert r["fourier_explained"] == pytest.approx(float(kf.values.sel(neuron=neuron)))
    assert len(a) == 25

    # Probe evidence: read from the probe result at the site right after the component.
    probes = report.results["probes"]
    assert row(report.heads, "L1H0")["probe_targets"] == probe_evidence(probes, "attn_head", 1, 2)[0]
    assert row(report.neurons, "L0N0")["probe_best"] == pytest.approx(probe_evidence(probes, "mlp_post", 0, 2)[1])
    assert row(report.neurons, "L0N0")["probe_best"] == pytest.approx(
        float(probes.values.sel(site="L1 pre").max()))
    again = fit_probes(tiny, generate(spec.model_copy(update={"n": 256, "seed": 4})),
                       list(probes.values.coords["target"].values), positions=[3], n_boot=100, seed=3,
                       progress=False)
    np.testing.assert_allclose(again.values.values, probes.values.values)


def test_the_report_says_how_attribution_agrees_with_exact_patching_and_which_to_trust(report):
    """summary.attribution_vs_exact is compare_with_exact of the atp column's results against
    exact patching on the report's own pairs; the page says to trust patching where they disagree."""
    from arithinterp.methods.attribution import compare_with_exact
    from arithinterp.methods.attribution_rules import RECOMMENDED_LABEL
    from arithinterp.reports.page import _summary_text

    vs = report.summary["attribution_vs_exact"]
    assert vs["method"] == RECOMMENDED_LABEL
    for table in ("heads", "neurons"):
        direct = compare_with_exact(report.results[f"attribution_{table}"], report.results[f"patching_{table}"],
                                    k=10)
        for key in ("spearman", "pearson", "top_k_overlap", "k", "n_major", "n_cells"):
            assert vs[table][key] == pytest.approx(direct[key], nan_ok=True)
    text = _summary_text(report)
    assert f"atp column: {RECOMMENDED_LABEL}" in text and "trust patch_effect" in text
    weak = {**vs, "heads": {**vs["heads"], "spearman": 0.5}}
    assert "does not rank the heads reliably" in _summary_text(
        type("R", (), {"summary": {**report.summary, "attribution_vs_exact": weak}})())


def test_save_load_round_trip_and_contract_layout(report, tmp_path):
    out = report.save(tmp_path / "report")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["report.html", "summary.json", "heads.parquet", "heads.json", "neurons.parquet",
                            "neurons.json", "top_prompts.json", "prompts.parquet", "results", "plotly.min.js"])
    page = (out / "report.html").read_text()
    # plotly.js is loaded from the one local copy beside the page, not inlined.
    assert '<script src="plotly.min.js"></script>' in page and len(page) < 2_000_000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    summary = json.loads((out / "summary.json").read_text())
    for key in ("model", "task", "n_prompts", "seed", "versions", "methods", "skipped", "circuit",
                "attribution_vs_exact", "top_components", "results"):
        assert key in summary
    assert set(summary["circuit"]) >= {"components", "faithfulness", "target", "size", "metric"}
    for name in ("patching_heads", "attribution_heads", "attribution_neurons", "mediation", "dla", "probes",
                 "key_frequencies", "heuristics", "neuron_maps", "logit_lens", "circuit"):
        assert summary["results"][name] == f"results/{name}" and (out / "results" / name / "result.json").is_file()
    assert TaskSpec.parse(summary["task"]) == SMALL.model_copy(update={"n": 24, "seed": 3})
    records = json.loads((out / "heads.json").read_text())
    assert [r["component"] for r in records] == report.heads["component"].tolist()

    back = AttributionReport.load(out)
    pd.testing.assert_frame_equal(back.heads, report.heads, check_dtype=False)
    pd.testing.assert_frame_equal(back.neurons, report.neurons, check_dtype=False)
    assert back.summary == report.summary and back.top_prompts == report.top_prompts
    assert set(back.results) == set(report.results)
    for name, result in report.results.items():
        assert back.results[name] == result, name
    assert back.circuit.circuit == report.circuit.circuit
    top = report.heads.iloc[0]["component"]
    assert len(back.top_prompts[top]) == 10 and {"prompt", "value"} <= set(back.top_prompts[top][0])
    # Saving again over the directory replaces it whole.
    back.save(out)
    assert AttributionReport.load(out).summary == report.summary
    with pytest.raises(ArithInterpError, match="missing"):
        (out / "heads.parquet").unlink()
        AttributionReport.load(out)


def test_methods_that_do_not_apply_are_skipped_with_a_reason(tiny):
    # Two-token answers: no neuron maps; three-digit operands: no grid small enough for Fourier.
    two = build_report(tiny, TaskSpec(operation="add", digits=1, format="fixed"), n=8,
                       methods=["heuristics", "dla"], progress=False)
    assert "one token" in two.summary["skipped"]["heuristics"]
    assert two.summary["skipped"]["patching"] == "not requested (methods=...)"
    assert two.summary["methods"] == ["dla"] and two.heads["patch_effect"].isna().all()
    # DLA of a multi-token answer reads its first token at the prompt's last position.
    assert two.summary["answer"] == "multi"
    wide = build_report(tiny, TaskSpec(operation="add", digits=3, format="fixed"), n=8,
                        methods=["fourier", "heuristics", "attribution"], progress=False)
    for method in ("fourier", "heuristics"):
        assert "900 values each" in wide.summary["skipped"][method]
    assert wide.neurons["fourier_key_freq"].isna().all() and (wide.neurons["heuristic"] == "").all()
    # Without exact patching the rank follows |AtP|, and no agreement flag has a reference.
    assert abs(wide.heads.iloc[0]["atp"]) == wide.heads["atp"].abs().max()
    assert wide.heads["agree"].isna().all()


def test_bad_input_raises_before_any_forward_pass(tiny, monkeypatch):
    counter = CountingRun(tiny.backend.run)
    monkeypatch.setattr(tiny.backend, "run", counter)
    cases = [
        (dict(methods=["patching", "telepathy"]), ConfigError, "valid"),
        (dict(n=1), ConfigError, "n "),
        (dict(pairs="bogus"), ConfigError, "pair kind"),
        (dict(pairs="same_answer"), ConfigError, "changes the answer"),
        (dict(target=0.0), ConfigError, "faithfulness"),
        (dict(seed=-1), ConfigError, "seed"),
        (dict(ablation="gaussian"), MethodError, "unknown ablation"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            build_report(tiny, SMALL, progress=False, **kwargs)
    with pytest.raises(TaskError, match="TaskSpec"):
        build_report(tiny, 42, progress=False)
    with pytest.raises(ConfigError, match="not a zoo model"):
        build_report(tiny, None, progress=False)
    with pytest.raises(ConfigError, match="Model or a spec"):
        build_report(3.5, SMALL, progress=False)
    with pytest.raises(ArithInterpError, match="no zoo model"):
        build_report("zoo:does-not-exist", SMALL, progress=False)
    assert counter.calls == 0


def test_planted_components_top_the_tables_and_form_the_circuit(tmp_path):
    planted = load_model(str(build_planted(tmp_path / "planted")))
    spec = TaskSpec(operation="add", digits=1, format="fixed", seed=3)
    rep = build_report(planted, spec, n=40, seed=3, pairs="random", ablation="counterfactual",
                       methods=["patching", "attribution", "circuit"], progress=False)
    assert rep.summary["circuit"]["ablation"] == "counterfactual"
    # MIB scores of the ranking (5 components: MIB keeps 0 of them up to 10 %, then 1, 2 and 5).
    assert rep.summary["circuit"]["cpr"] == pytest.approx(rep.circuit.cpr)
    assert rep.circuit.mib_n_kept == [0] * 7 + [1, 2, 5] and rep.circuit.mib_faithfulness[-1] == pytest.approx(1.0)
    assert set(rep.heads["component"].head(2)) == {"L0H0", "L0H1"}
    assert rep.heads.set_index("component").loc[["L0H2", "L0H3"], "patch_effect"].abs().max() < 1e-4
    assert rep.neurons.iloc[0]["component"] == f"L0N{CARRY}"
    assert set(rep.circuit.circuit) == {"MLP0", "L0H0", "L0H1"}
    assert rep.summary["circuit"]["faithfulness"] == pytest.approx(1.0, abs=1e-4)
    in_circuit = rep.heads.set_index("component")["in_circuit"]
    assert in_circuit["L0H0"] and in_circuit["L0H1"] and not in_circuit["L0H2"] and not in_circuit["L0H3"]
    assert set(rep.summary["top_components"][:3]) == {"L0H0", "L0H1", f"L0N{CARRY}"}
    # Per answer digit (answer_index): the tens digit is the carry, computed from both operands too.
    pairs = make_pairs(generate(spec.model_copy(update={"n": 40})), "random", seed=3)
    tens = discover_circuit(planted, pairs, answer_index=0, progress=False)
    assert set(tens.circuit) == {"MLP0", "L0H0", "L0H1"} and tens.meta.options["answer_index"] == 0
    with pytest.raises(ConfigError, match="answer_index"):
        discover_circuit(planted, pairs, answer_index=2, progress=False)


def test_zoo_model_report_matches_methods():
    model = load_model("zoo:add-2d-tok")
    assert model.default_task == TaskSpec(operation="add", operand_range=(0, 99), format="plain")
    rep = build_report(model, None, n=16, methods=["patching", "dla", "circuit"], seed=1, progress=False)
    prompts = generate(model=model, n=16, seed=1)
    pairs = make_pairs(prompts, "random", seed=1, on_impossible="drop")
    patch = patch_activations(model, pairs, kind="attn_head", per_position=False, answer="single", seed=1,
                              progress=False)
    for head in range(4):
        assert row(rep.heads, f"L0H{head}")["patch_effect"] == pytest.approx(
            float(patch.values.sel(layer=0, head=head)), abs=1e-9)
    dla = direct_logit_attribution(model, pairs.clean, against=pairs.corrupt)
    assert row(rep.neurons, "L0N10")["dla"] == pytest.approx(float(dla.neurons(0).mean("prompt").sel(neuron=10)))
    assert rep.summary["model"] == "zoo:add-2d-tok" and rep.summary["n_prompts"] == 16
    assert rep.circuit is not None and rep.summary["circuit"]["faithfulness"] >= 0.9


def test_each_prompt_set_is_tokenized_once_per_answer_mode(tiny, monkeypatch):
    import arithinterp.tasks.tokenization as tokenization

    seen = []
    encode = tokenization._encode_rows
    monkeypatch.setattr(tokenization, "_encode_rows",
                        lambda prompts, tok, answer: seen.append((prompts.hash, answer)) or encode(prompts, tok, answer))
    build_report(tiny, SMALL, n=24, seed=3, progress=False)
    assert seen and len(seen) == len(set(seen)), sorted(seen)


def test_a_report_at_chance_level_warns_on_its_page_and_in_its_summary(tmp_path):
    """zoo:modadd-113 on the plain format (issue 14's trap): the report warns, names the format,
    and shows the warning first on its page; on its own task it does not."""
    from arithinterp.errors import ChanceAccuracyWarning
    from arithinterp.reports.page import report_sections

    model = load_model("zoo:modadd-113")
    with pytest.warns(ChanceAccuracyWarning, match="format='modular'"):
        rep = build_report(model, TaskSpec(operation="modadd"), n=8, methods=["dla"], progress=False)
    (message,) = rep.summary["warnings"]
    assert "format='plain' here, the model expects format='modular'" in message
    first = report_sections(rep)[0]
    assert first.title.startswith("Warning") and message in first.text
    rep.save(tmp_path / "report")
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["warnings"] == [message]
    assert message in html.unescape((tmp_path / "report" / "report.html").read_text())
    own = build_report(model, None, n=8, methods=["dla"], progress=False)
    assert own.summary["warnings"] == [] and report_sections(own)[0].title == "Summary"
