"""discover_circuit: a planted circuit must be recovered exactly; zoo circuits are reported.

The planted model (built below by :func:`build_planted`) is a one-layer GPT-2 whose
weights are written by hand so that it adds two digits, ``a+b=`` followed by a
two-digit answer (``format="fixed"``: tens at position 3, units at position 4, teacher
forced). Every residual feature is written as a ``(+v, -v)`` pair of dims, so the
residual stream has mean 0 and LayerNorm only rescales it; at the answer positions
the norm is the same for every prompt, so the rescaling is a known constant that
the weights divide out.

Residual dims (d_model = 128):

* ``TOK``: one-hot token; ``POS``: one-hot position; ``CONST``: 1 everywhere.
* ``A`` / ``B``: one-hot of operand a / b, written by the copying heads.
* ``DEC``: two scalar dims written by the decoy heads.
* ``OUT``: one-hot answer digit, read by the (untied) unembedding.

Layer 0 attention (query bias only; the key reads the position, so each head
attends with weight exactly 1 to one fixed position from every later query):

* **L0H0** attends to position 0 (``a``) and copies its digit into ``A``;
* **L0H1** attends to position 2 (``b``) and copies its digit into ``B``;
* L0H2 / L0H3 are decoys: they attend to ``+`` / ``=`` (the same in every prompt)
  and write into ``DEC``, which nothing reads.

Layer 0 MLP (ReLU):

* neurons ``10a + b`` (0..99) fire only at position 4 when ``A = a`` and ``B = b``
  and write the units digit ``(a + b) % 10`` into ``OUT``;
* neuron **100 is the carry neuron**: at position 3 its pre-activation is
  ``K (a + b - 9.5)``, so it fires exactly when ``a + b >= 10``, and it writes
  the tens digit ``1`` into ``OUT`` (outweighing neuron 101, which writes ``0``
  at position 3 for every prompt);
* neurons 102..127 are dead.

So the causal structure is known: with ``random`` pairs (both operands change),
L0H0, L0H1 and MLP0 carry the whole effect and the decoys none.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from arithinterp.errors import ConfigError
from arithinterp.methods.ablation import faithfulness
from arithinterp.methods.circuits import CircuitResult, circuit_figure, discover_circuit
from arithinterp.models import load_model
from arithinterp.tasks import TaskSpec, generate, make_pairs
from tests.conftest import DIGIT_VOCAB, digit_tokenizer

D, N_POS, N_HEAD, D_HEAD, N_INNER = 128, 8, 4, 32, 128
TOK, POS, A, B, DEC, OUT, CONST = 0, 40, 56, 76, 96, 100, 120
WIDTH = {TOK: 20, POS: 8, A: 10, B: 10, OUT: 10}  # the minus half of a pair sits WIDTH dims later
K, Q_BIG = 50.0, 500.0
EPS = 1e-5
CARRY = 100
HEAD_TARGET = {0: 0, 1: 2, 2: 1, 3: 3}  # head -> the position it attends to


def _scale(norm2: float) -> float:
    """LayerNorm's factor on a mean-zero vector of squared norm ``norm2`` (weight 1, bias 0)."""
    return 1.0 / math.sqrt(norm2 / D + EPS)


def build_planted(path: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=len(DIGIT_VOCAB), n_positions=N_POS, n_embd=D, n_layer=1, n_head=N_HEAD,
                     n_inner=N_INNER, activation_function="relu", tie_word_embeddings=False,
                     layer_norm_epsilon=EPS, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = GPT2LMHeadModel(cfg)
    sd = {k: torch.zeros_like(v) for k, v in hf.state_dict().items()}
    for k in sd:
        if k.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            sd[k] = torch.ones_like(sd[k])

    def pair(vec: torch.Tensor, base: int, i: int, value: float = 1.0) -> None:
        vec[base + i] += value
        vec[base + WIDTH[base] + i] -= value

    for t in range(len(DIGIT_VOCAB)):
        pair(sd["transformer.wte.weight"][t], TOK, t)
    for p in range(N_POS):
        pair(sd["transformer.wpe.weight"][p], POS, p)
        sd["transformer.wpe.weight"][p, CONST] = 1.0
        sd["transformer.wpe.weight"][p, CONST + 1] = -1.0
    # At the answer positions: token, position, const pairs (6); after attention also
    # A, B and the two decoys (another 8).
    c1, c2 = _scale(6.0), _scale(14.0)

    w_qkv, b_qkv = sd["transformer.h.0.attn.c_attn.weight"], sd["transformer.h.0.attn.c_attn.bias"]
    w_o = sd["transformer.h.0.attn.c_proj.weight"]
    for h, target in HEAD_TARGET.items():
        q, k, v = h * D_HEAD, D + h * D_HEAD, 2 * D + h * D_HEAD
        b_qkv[q] = Q_BIG
        w_qkv[POS + target, k] = 1.0
        n_copy = 10 if h < 2 else len(DIGIT_VOCAB)
        for j in range(n_copy):
            w_qkv[TOK + j, v + j] = 1.0 / c1  # z = one-hot of the attended token
            if h == 0:
                pair(w_o[h * D_HEAD + j], A, j)
            elif h == 1:
                pair(w_o[h * D_HEAD + j], B, j)
            else:
                w_o[h * D_HEAD + j, DEC + 2 * (h - 2)] = 1.0
                w_o[h * D_HEAD + j, DEC + 2 * (h - 2) + 1] = -1.0

    w_in, b_in = sd["transformer.h.0.mlp.c_fc.weight"], sd["transformer.h.0.mlp.c_fc.bias"]
    w_out = sd["transformer.h.0.mlp.c_proj.weight"]
    r = 1.0 / c2  # undo ln_2's scale
    for a in range(10):
        for b in range(10):
            n = 10 * a + b
            w_in[A + a, n] = w_in[B + b, n] = w_in[POS + 4, n] = K * r
            b_in[n] = -2.5 * K
            pair(w_out[n], OUT, (a + b) % 10, 10.0 / (0.5 * K))
    for j in range(10):
        w_in[A + j, CARRY] = w_in[B + j, CARRY] = K * r * j
    w_in[POS + 3, CARRY] = 20 * K * r
    b_in[CARRY] = -9.5 * K - 20 * K
    pair(w_out[CARRY], OUT, 1, 10.0 / (0.5 * K))
    w_in[POS + 3, CARRY + 1] = K * r
    b_in[CARRY + 1] = -0.5 * K
    pair(w_out[CARRY + 1], OUT, 0, 5.0 / (0.5 * K))

    for t in range(10):
        sd["lm_head.weight"][t, OUT + t] = 1.0
        sd["lm_head.weight"][t, OUT + WIDTH[OUT] + t] = -1.0
        sd["lm_head.weight"][t, CONST] = 0.1  # digits beat other tokens; the max logit stays > 0
    hf.load_state_dict(sd)
    hf.save_pretrained(path, safe_serialization=True)
    digit_tokenizer().save_pretrained(path)
    return path


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
