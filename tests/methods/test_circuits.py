"""discover_circuit: a planted circuit must be recovered exactly; zoo circuits are reported.

The planted model is the planted-circuit benchmark's AND model
(:mod:`arithinterp.planted.and_model`, whose docstring explains the construction): a
one-layer GPT-2 with hand-set weights that adds two digits, ``a+b=`` followed by a
two-digit answer. L0H0 copies a, L0H1 copies b, MLP0 looks up the sum (neuron
``CARRY`` writes the tens digit, neurons past ``CARRY + 1`` are dead); the decoys L0H2 /
L0H3 write dims nothing reads. With ``random`` pairs (both operands change), L0H0, L0H1
and MLP0 carry the whole effect and the decoys none.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from arithinterp.errors import ConfigError
from arithinterp.methods.ablation import faithfulness
from arithinterp.methods.circuits import CircuitResult, circuit_figure, discover_circuit
from arithinterp.models import load_model
from arithinterp.planted import and_model
from arithinterp.planted.and_model import build_and_model as build_planted
from arithinterp.tasks import TaskSpec, generate, make_pairs

# The construction's constants, importable from here (tests of other methods modify the model).
D, D_HEAD, POS, DEC, HEAD_TARGET = and_model.D, and_model.D_HEAD, and_model.POS, and_model.DEC, and_model.HEAD_TARGET
CARRY, N_INNER = and_model.CARRY, and_model.N_INNER

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return load_model(str(build_planted(tmp_path_factory.mktemp("planted") / "model")))


@pytest.fixture(scope="module")
def task():
    prompts = generate(TaskSpec(operation="add", digits=1, format="fixed", n=40, seed=3))
    return prompts, make_pairs(prompts, "random")


def test_planted_model_adds(planted, task):
    prompts, _ = task
    tokens = planted.to_tokens([p + a for p, a in zip(prompts.prompts, prompts.answers)])
    pred = planted.logits(tokens[:, :-1]).argmax(-1)[:, 3:5]
    assert (pred == tokens[:, 4:6]).all()


def test_planted_circuit_is_recovered(planted, task):
    prompts, pairs = task
    res = discover_circuit(planted, pairs, prompts, progress=False)
    scores = dict(zip(res.values.coords["component"].values.tolist(), res.values.values.tolist()))
    # The planted components carry the whole effect and are ranked first ...
    assert set(res.values.coords["component"].values[:3].tolist()) == {"MLP0", "L0H0", "L0H1"}
    assert scores["MLP0"] == pytest.approx(1.0, abs=1e-4)  # one layer: the MLP output is everything
    assert min(scores["L0H0"], scores["L0H1"]) > 0.2
    # ... and the decoys carry none.
    assert max(scores["L0H2"], scores["L0H3"]) < 1e-4
    # The smallest faithful circuit is exactly the planted one.
    assert res.reached and set(res.circuit) == {"MLP0", "L0H0", "L0H1"}
    assert res.circuit_faithfulness == pytest.approx(1.0, abs=1e-4)
    curve = res.curve.values
    assert np.all(curve[:2] < 0.9) and np.all(curve[2:] == pytest.approx(1.0, abs=1e-4))
    # The public faithfulness function agrees on the returned sites.
    direct = faithfulness(planted, res.sites, prompts, answer="multi", n_boot=10)
    assert direct.faithfulness == pytest.approx(res.circuit_faithfulness, abs=1e-6)
    # Completeness: ablating only the circuit costs the model most of its score.
    assert res.circuit_ablated_score < res.full_score
    assert res.circuit_ablated_score == pytest.approx(res.empty_score, abs=1e-4)


@pytest.mark.parametrize("score,grow", [("attribution", "topk"), ("patching", "greedy")])
def test_planted_circuit_other_score_and_growth(planted, task, score, grow):
    prompts, pairs = task
    res = discover_circuit(planted, pairs, prompts, score=score, grow=grow, progress=False)
    assert set(res.circuit) == {"MLP0", "L0H0", "L0H1"}
    assert res.reached


def test_planted_carry_neuron_tops_neuron_ranking(planted, task):
    prompts, pairs = task
    res = discover_circuit(planted, pairs, prompts, components=("attn_head", "mlp_post"),
                           metric="accuracy", max_size=8, progress=False)
    neurons = res.values.where(res.values.coords["kind"] == "mlp_post", drop=True)
    top = str(neurons.isel(component=int(neurons.argmax())).coords["component"].values)
    assert top == f"L0N{CARRY}"
    dead = [f"L0N{n}" for n in range(CARRY + 2, N_INNER)]
    assert float(res.values.sel(component=dead).max()) < 1e-6


def test_result_plot_figure_and_bad_options(planted, task):
    prompts, pairs = task
    res = discover_circuit(planted, pairs, prompts, progress=False)
    assert isinstance(res.plot(), go.Figure)
    fig = circuit_figure(res)
    names = {t for trace in fig.data if trace.mode == "markers+text" for t in trace.text}
    assert names == {"MLP0", "L0H0", "L0H1"}
    assert sum(trace.mode == "lines" for trace in fig.data) == 2  # both heads -> MLP0
    for kwargs in ({"components": ("mlp_out", "mlp_post")}, {"score": "magic"}, {"grow": "all"},
                   {"metric": "prob"}, {"components": ("resid_pre",)}, {"max_size": 0}):
        with pytest.raises(ConfigError):
            discover_circuit(planted, pairs, prompts, progress=False, **kwargs)
    assert isinstance(CircuitResult.example(), CircuitResult)


# ---- zoo models: report the circuits found ----------------------------------------------------

ZOO_CASES = {
    # 1 layer, 4 heads, one token per number up to 198: a+b with a, b < 100, random pairs.
    "add-2d-tok": (dict(operation="add", operand_range=(0, 99), format="plain", n=100, seed=7),
                   dict(kind="random"), "single"),
    # 2 layers, 3 heads, digit tokens: change digit 2 of an operand (teacher-forced 6-digit answer).
    "add-5d": (dict(operation="add", digits=5, format="fixed", n=64, seed=1),
               dict(kind="digit", column=2), "multi"),
}


@pytest.mark.parametrize("name", sorted(ZOO_CASES))
def test_zoo_circuit_report(name):
    spec, pair_kw, answer = ZOO_CASES[name]
    model = load_model(f"zoo:{name}")
    prompts = generate(TaskSpec(**spec))
    pairs = make_pairs(prompts, pair_kw["kind"], **{k: v for k, v in pair_kw.items() if k != "kind"})
    lines = [f"\n{name} ({pair_kw}, answer={answer}, {len(prompts.prompts)} prompts, target 0.9):"]
    for kw in (dict(), dict(grow="greedy"), dict(score="attribution"), dict(metric="accuracy")):
        res = discover_circuit(model, pairs, prompts, answer=answer, progress=False, **kw)
        lines.append(
            f"  {str(kw or 'topk / patching / nl'):32s} circuit {res.circuit}: F = {res.circuit_faithfulness:.3f}; "
            f"completeness: full {res.full_score:.3f}, circuit ablated {res.circuit_ablated_score:.3f}, "
            f"all ablated {res.empty_score:.3f}"
        )
        assert res.reached and res.circuit_faithfulness >= 0.9
        assert res.circuit_ablated_score < res.full_score
        if kw.get("grow", "topk") == "topk":
            # Every head and MLP kept is the full model: F is exactly 1 at the end of the curve.
            assert float(res.curve.values[-1]) == pytest.approx(1.0, abs=1e-9)
    if name == "add-2d-tok":
        res = discover_circuit(model, pairs, prompts, components=("attn_head", "mlp_post"), answer=answer,
                               max_size=200, progress=False)
        f = res.curve.values
        lines.append(f"  heads + neurons (top-k, <= 200): {len(res.circuit)} components, reached={res.reached}, "
                     f"F at 4 / 50 / 100 / 200 = {f[3]:.3f} / {f[49]:.3f} / {f[99]:.3f} / {f[199]:.3f}; "
                     f"top: {res.circuit[:8]}")
    print("\n".join(lines))
