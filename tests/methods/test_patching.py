"""The fast patching engine against two oracles: the literal per-cell loop and
``transformer_lens.patching`` on the same model, prompts and metric."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching as tl_patching

from arithinterp.errors import ArithInterpError, SiteError, TokenizationError
from arithinterp.methods.metrics import logit_diff, tokenize_pairs
from arithinterp.methods.patching import patch_activations
from arithinterp.models import load_model
from arithinterp.tasks import TaskSpec, generate, make_pairs

ALL_KINDS = ["embed", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out",
             "attn_head", "q", "k", "v", "pattern", "mlp_post", "final_resid"]


@pytest.fixture(scope="module")
def pairs():
    ps = generate(TaskSpec(operation="add", digits=2, format="fixed", n=4, seed=0))
    return make_pairs(ps, "operand_a")


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request, tiny_hf_dirs):
    return load_model(str(tiny_hf_dirs[request.param]))


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_fast_engine_equals_literal_loop(model, pairs, kind, direction):
    if direction == "noise" and model.shape.normalization != "LN":
        pytest.skip("both directions are checked on GPT-2; Llama runs denoising only, to keep CI short")
    for per_position in (True, False):
        kw = dict(kind=kind, per_position=per_position, direction=direction, normalize=False,
                  n_boot=10, progress=False, neurons=[0, 7, 63] if kind == "mlp_post" else None)
        literal = patch_activations(model, pairs, engine="literal", **kw)
        fast = patch_activations(model, pairs, engine="fast", **kw)
        assert fast.values.dims == literal.values.dims
        torch.testing.assert_close(
            torch.as_tensor(fast.values.values), torch.as_tensor(literal.values.values), atol=1e-5, rtol=0
        )
    assert float(abs(literal.values).max()) > 1e-3 or kind == "final_resid", "the sweep must show effects"


TL_SWEEPS = {
    "resid_pre": (tl_patching.get_act_patch_resid_pre, ("layer", "pos")),
    "attn_out": (tl_patching.get_act_patch_attn_out, ("layer", "pos")),
    "mlp_out": (tl_patching.get_act_patch_mlp_out, ("layer", "pos")),
    "attn_head": (tl_patching.get_act_patch_attn_head_out_by_pos, ("layer", "pos", "head")),
    "v": (tl_patching.get_act_patch_attn_head_v_by_pos, ("layer", "pos", "head")),
    "pattern": (tl_patching.get_act_patch_attn_head_pattern_by_pos, ("layer", "head", "pos")),
}


@pytest.mark.parametrize("kind", list(TL_SWEEPS))
def test_fast_engine_equals_transformer_lens_patching(model, pairs, kind):
    if model.backend_name != "transformer_lens":
        pytest.skip("transformer_lens.patching needs the TransformerLens bridge")
    batch = tokenize_pairs(pairs, model.tokenizer)
    bridge = model.backend.bridge
    _, clean_cache = bridge.run_with_cache(batch.clean)

    def metric(logits):
        return logit_diff(logits[:, batch.answer_positions], batch.clean_answer, batch.corrupt_answer).mean()

    fn, axes = TL_SWEEPS[kind]
    theirs = fn(bridge, batch.corrupt, clean_cache, metric)
    ours = patch_activations(model, batch, kind=kind, normalize=False, n_boot=10, progress=False)
    theirs = torch.as_tensor(theirs).double()
    mine = torch.as_tensor(ours.values.transpose(*axes).values)
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)


def test_normalised_effects_run_from_corrupt_to_clean(model, pairs):
    res = patch_activations(model, pairs, kind="resid_pre", progress=False, n_boot=50)
    # Patching the whole residual stream at layer 0, every position, restores the clean run.
    full = patch_activations(model, pairs, kind="resid_pre", per_position=False, progress=False, n_boot=50)
    assert float(full.values.sel(layer=0)) == pytest.approx(1.0, abs=1e-6)
    assert (res.extras["ci_low"] <= res.values + 1e-12).all() and (res.values <= res.extras["ci_high"] + 1e-12).all()
    noise = patch_activations(model, pairs, kind="resid_pre", per_position=False, direction="noise", progress=False)
    assert float(noise.values.sel(layer=0)) == pytest.approx(0.0, abs=1e-6)


def test_bad_input_fails_before_any_forward_pass(model, pairs, monkeypatch):
    calls = []
    monkeypatch.setattr(model.backend, "run", lambda *a, **k: calls.append(1))
    with pytest.raises(SiteError, match="valid kinds"):
        patch_activations(model, pairs, kind="residual", progress=False)
    with pytest.raises(TokenizationError, match="one token"):
        patch_activations(model, pairs, kind="resid_pre", answer="single", progress=False)
    wide = generate(TaskSpec(operation="add", digits=3, format="fixed", n=4, seed=0))
    mixed = make_pairs(wide, "operand_a")
    mixed = type(mixed)(pairs.clean, mixed.corrupt, mixed.kind)
    with pytest.raises(TokenizationError, match="equal lengths"):
        patch_activations(model, mixed, kind="resid_pre", progress=False)
    assert calls == []
    assert issubclass(SiteError, ArithInterpError)


def test_result_plots_a_labeled_heatmap(model, pairs):
    res = patch_activations(model, pairs, kind="attn_head", progress=False, n_boot=10)
    fig = res.plot()
    assert fig.data[0].type == "heatmap"
    assert res.values.dims == ("layer", "head", "pos")
    assert list(res.values.coords["pos_token"].values[:2]) == list(tokenize_pairs(pairs, model.tokenizer).str_tokens[:2])


def test_relative_prob_is_stolfos_relative_change(model, pairs):
    batch = tokenize_pairs(pairs, model.tokenizer)
    res = patch_activations(model, batch, kind="resid_pre", metric="relative_prob", normalize=False,
                            progress=False, n_boot=10)
    from arithinterp.models import Site

    site = Site("resid_pre", 1, pos=3)
    _, cache = model.run_with_cache(batch.clean, [site])
    ap = batch.answer_positions

    def p_clean(logits):
        logp = torch.log_softmax(logits[:, ap].double(), -1)
        return logp.gather(-1, batch.clean_answer.unsqueeze(-1)).squeeze(-1).sum(-1).exp()

    before = p_clean(model.logits(batch.corrupt))
    after = p_clean(model.run_with_patches(batch.corrupt, {site: cache[site]}))
    expected = ((after - before) / (before + 1e-10)).mean()
    assert float(res.values.sel(layer=1, pos=3)) == pytest.approx(float(expected), rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError, match="normalize=False"):
        patch_activations(model, batch, kind="resid_pre", metric="relative_prob", progress=False)


def test_backends_agree_on_patching(tiny_hf_dirs, pairs):
    results = {}
    for backend in ("transformer_lens", "nnsight"):
        m = load_model(str(tiny_hf_dirs["gpt2"]), backend=backend)
        results[backend] = [
            patch_activations(m, pairs, kind=kind, engine=engine, progress=False, n_boot=10).values
            for kind, engine in (("attn_head", "fast"), ("mlp_out", "literal"))
        ]
    for a, b in zip(results["transformer_lens"], results["nnsight"]):
        torch.testing.assert_close(torch.as_tensor(a.values), torch.as_tensor(b.values), atol=1e-5, rtol=0)
