"""ablation= of faithfulness / discover_circuit: each kind against a literal per-prompt computation,
known answers on the hand-set AND-circuit model, and bad input refused before any forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arithinterp.errors import MethodError
from arithinterp.methods.circuit_ablation import (
    AnswerData,
    learn_constant,
    optimal_loss,
    resample_draws,
    site_means,
)
from arithinterp.methods.circuits import discover_circuit
from arithinterp.methods.faithfulness import faithfulness
from arithinterp.models import Site, load_model
from arithinterp.planted.and_model import build_and_model as build_planted
from arithinterp.tasks import TaskSpec, generate, make_pairs, tokenize
from tests.conftest import scaled_variant

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def model(tiny_hf_dirs, tmp_path_factory):
    return load_model(str(scaled_variant(tiny_hf_dirs["gpt2"], tmp_path_factory.mktemp("sharp_abl"))))


@pytest.fixture(scope="module")
def pairs():
    return make_pairs(generate(TaskSpec(operation="add", operand_range=(0, 4), format="plain", n=8, seed=6)),
                      "random")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return load_model(str(build_planted(tmp_path_factory.mktemp("planted_abl") / "model")))


@pytest.fixture(scope="module")
def planted_task():
    prompts = generate(TaskSpec(operation="add", digits=1, format="fixed", n=40, seed=3))
    return prompts, make_pairs(prompts, "random")


CIRCUIT = [Site("attn_head", 0, head=2), Site("mlp_out", 1)]


def _nl(logits: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    logits = logits[:, -1].double()
    return logits.gather(-1, answer[:, None])[:, 0] / logits.max(-1).values


def _literal(model, tokens, answer, source_of, circuit_keep_heads0=(2,)):
    """Per prompt, one forward pass with every non-circuit component set to ``source_of(i)``'s
    activation (heads of layer 0 but head 2 at their z, the whole of attention 1 and MLP 0)."""
    z0, a1, m0 = Site("attn_head", 0), Site("attn_out", 1), Site("mlp_out", 0)
    out = []
    drop = [h for h in range(model.shape.n_heads) if h not in circuit_keep_heads0]
    for i in range(tokens.shape[0]):
        _, src = model.run_with_cache(source_of(i), [z0, a1, m0])

        def heads(x, src=src):
            x = x.clone()
            x[:, :, drop] = src[z0][:, :, drop]
            return x

        logits = model.run_with_patches(tokens[i:i + 1], {z0: heads, a1: src[a1], m0: src[m0]})
        out.append(float(_nl(logits, answer[i:i + 1])))
    return np.array(out)


def _everything(model, tokens, answer, source_of):
    a, m = [Site("attn_out", 0), Site("attn_out", 1)], [Site("mlp_out", 0), Site("mlp_out", 1)]
    out = []
    for i in range(tokens.shape[0]):
        _, src = model.run_with_cache(source_of(i), a + m)
        logits = model.run_with_patches(tokens[i:i + 1], {s: src[s] for s in a + m})
        out.append(float(_nl(logits, answer[i:i + 1])))
    return np.array(out)


@pytest.mark.parametrize("kind", ["resample", "counterfactual"])
def test_per_prompt_ablations_equal_a_literal_computation(model, pairs, kind):
    tok = tokenize(pairs.clean, model.tokenizer, answer="single")
    tokens, answer = tok.prompt_tokens, tok.answer_tokens[:, 0]
    full = _nl(model.logits(tokens), answer).numpy()
    if kind == "counterfactual":
        corrupt = tokenize(pairs.corrupt, model.tokenizer, answer="single").prompt_tokens
        sources = [lambda i: corrupt[i:i + 1]]
        res = faithfulness(model, CIRCUIT, pairs, ablation=kind, n_boot=20)
    else:
        draws = resample_draws(len(tokens), len(tokens), n_draws=2, seed=4, self_reference=True)
        assert not (draws == torch.arange(len(tokens))).any()  # never a prompt's own activation
        assert all(sorted(d.tolist()) == list(range(len(tokens))) for d in draws)  # permutations
        sources = [lambda i, d=d: tokens[int(d[i]):int(d[i]) + 1] for d in draws]
        res = faithfulness(model, CIRCUIT, pairs.clean, ablation=kind, n_draws=2, seed=4, n_boot=20)
    circuit = np.mean([_literal(model, tokens, answer, s) for s in sources], 0)
    empty = np.mean([_everything(model, tokens, answer, s) for s in sources], 0)
    np.testing.assert_allclose(res.values.values, [circuit.mean(), full.mean(), empty.mean()], rtol=1e-5, atol=1e-6)
    expected = (circuit.mean() - empty.mean()) / (full.mean() - empty.mean())
    assert res.faithfulness == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert len(res.meta.extra["draw_faithfulness"]) == len(sources)
    assert res.meta.options["ablation"] == kind


def test_zero_ablation_keeps_the_attention_bias(model, pairs):
    """Zero ablation sets a head's z to 0; a layer with every head ablated keeps b_O."""
    tok = tokenize(pairs.clean, model.tokenizer, answer="single")
    tokens, answer = tok.prompt_tokens, tok.answer_tokens[:, 0]
    zero_z = {Site("attn_head", 1): torch.zeros(()), Site("mlp_out", 0): torch.zeros(()),
              Site("attn_head", 0): lambda x: torch.cat([torch.zeros_like(x[:, :, :2]), x[:, :, 2:3],
                                                         torch.zeros_like(x[:, :, 3:])], 2)}
    expected = _nl(model.run_with_patches(tokens, zero_z), answer).mean()
    res = faithfulness(model, CIRCUIT, pairs.clean, ablation="zero", n_boot=20)
    assert float(res.values.sel(target="circuit")) == pytest.approx(float(expected), rel=1e-5)


def test_optimal_constant_beats_mean_and_zero(model, pairs):
    """Li & Janson: the optimal constant's loss is at most any other constant's (mean, zero)."""
    tok = tokenize(pairs.clean, model.tokenizer, answer="single")
    data = AnswerData(tok.prompt_tokens, tok.answer_tokens, tok.answer_positions)
    for site in (Site("attn_head", 1, head=0), Site("mlp_out", 0)):
        whole = site.whole() if site.head is not None else site
        mean = site_means(model, [whole], data.seqs)[whole]
        mean = mean[:, site.head] if site.head is not None else mean
        best, loss = learn_constant(model, site, mean, data, steps=30)
        assert loss == pytest.approx(optimal_loss(model, site, best, data), rel=1e-5)
        assert loss <= optimal_loss(model, site, mean, data) + 1e-9
        assert loss <= optimal_loss(model, site, torch.zeros_like(mean), data) + 1e-9
    res = faithfulness(model, CIRCUIT, pairs.clean, ablation="optimal", n_boot=20)
    assert res.faithfulness is not None and np.isfinite(res.faithfulness)


@pytest.mark.parametrize("kind", ["mean", "resample", "counterfactual"])
def test_planted_circuit_is_exact_under_on_distribution_ablations(planted, planted_task, kind):
    """The decoys write the same vector in every prompt (they read '+' and '='), so replacing them
    by any on-distribution value (the mean, another prompt's, the corrupt prompt's) leaves the
    planted AND circuit exactly faithful."""
    prompts, pairs = planted_task
    circuit = [Site("attn_head", 0, head=0), Site("attn_head", 0, head=1), Site("mlp_out", 0)]
    given = pairs if kind == "counterfactual" else prompts
    res = faithfulness(planted, circuit, given, answer="multi", ablation=kind, n_boot=20)
    assert res.faithfulness == pytest.approx(1.0, abs=1e-4)
    found = discover_circuit(planted, pairs, ablation=kind, progress=False)
    assert set(found.circuit) == {"MLP0", "L0H0", "L0H1"} and found.reached


def test_planted_optimal_ablation(planted, planted_task):
    """Optimal constants minimise the answer's cross-entropy, which a decoy can lower by moving the
    norm's scale (sharper logits): the circuit's CE-optimal replacement is not the decoys' own
    output, so F (on NL) need not be 1; discovery still returns the planted circuit."""
    prompts, pairs = planted_task
    found = discover_circuit(planted, pairs, ablation="optimal", target=0.8, progress=False)
    print(f"optimal: circuit {found.circuit}, F = {found.circuit_faithfulness:.3f}")
    assert set(found.circuit) == {"MLP0", "L0H0", "L0H1"} and found.reached


def test_planted_zero_ablation_damages_through_the_norm(planted, planted_task):
    """Zeroing the decoys changes ln_2's scale, which the MLP's weights divide out: nothing reads
    the decoys, yet zero ablation of them costs the planted circuit faithfulness."""
    prompts, _ = planted_task
    circuit = [Site("attn_head", 0, head=0), Site("attn_head", 0, head=1), Site("mlp_out", 0)]
    res = faithfulness(planted, circuit, prompts, answer="multi", ablation="zero", metric="logit_diff", n_boot=20)
    print(res.values.values, res.faithfulness)
    assert res.faithfulness < 0.99


def test_bad_ablation_input_is_refused_before_running(model, pairs, counted):
    with pytest.raises(MethodError, match="unknown ablation"):
        faithfulness(model, CIRCUIT, pairs.clean, ablation="gaussian")
    with pytest.raises(MethodError, match="reference set is empty"):
        faithfulness(model, CIRCUIT, pairs.clean, reference=pairs.clean[[]])
    with pytest.raises(MethodError, match="PromptPairs"):
        faithfulness(model, CIRCUIT, pairs.clean, ablation="counterfactual")
    with pytest.raises(MethodError, match="n_draws"):
        faithfulness(model, CIRCUIT, pairs.clean, ablation="resample", n_draws=0)
    with pytest.raises(MethodError, match="unknown ablation"):
        discover_circuit(model, pairs, ablation="noise", progress=False)
    with pytest.raises(MethodError, match="reference set is empty"):
        discover_circuit(model, pairs, reference=pairs.clean[[]], progress=False)
    assert counted.calls == 0
