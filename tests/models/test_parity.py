"""The TransformerLens and nnsight backends agree on the same HF weights.

Every site kind is compared for caching, patching (with head / neuron /
position selections) and gradients, on GPT-2, Llama and GPT-NeoX layouts; and
both backends refuse the same bad model specs with ModelLoadError.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

from arithinterp.errors import ModelLoadError, SiteError
from arithinterp.models import Site, load_model
from arithinterp.models.site import SITE_KINDS
from tests.conftest import digit_tokenizer

BACKEND_NAMES = ("transformer_lens", "nnsight")
ATOL = 1e-4
GRAD_KINDS = ["embed", "resid_pre", "resid_mid", "q", "pattern", "attn_head", "mlp_post"]


def _layerless(kind: str) -> bool:
    return kind in ("embed", "final_resid")


def _build_tiny_neox(path):
    """GPT-NeoX with parallel residual and partial rotary (Pythia's layout)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(
        vocab_size=20, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32,
    )
    GPTNeoXForCausalLM(cfg).save_pretrained(path)
    digit_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def parity_dirs(tiny_hf_dirs, tmp_path_factory):
    dirs = dict(tiny_hf_dirs)
    dirs["neox"] = _build_tiny_neox(tmp_path_factory.mktemp("tiny_neox") / "neox")
    return dirs


@pytest.fixture(scope="module", params=["gpt2", "llama", "neox"])
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def pair(arch, parity_dirs):
    """The same directory loaded on both backends: ``{backend name: Model}``."""
    return {name: load_model(str(parity_dirs[arch]), backend=name) for name in BACKEND_NAMES}


def _assert_agree(pair, fn, atol=ATOL):
    tl, nn = (fn(pair[name]) for name in BACKEND_NAMES)
    if isinstance(tl, dict):
        assert tl.keys() == nn.keys()
        for key in tl:
            assert tl[key].shape == nn[key].shape, key
            torch.testing.assert_close(nn[key], tl[key], atol=atol, rtol=0, msg=f"{key}")
    else:
        assert tl.shape == nn.shape
        torch.testing.assert_close(nn, tl, atol=atol, rtol=0)
    return tl


def _sites_for(kind: str, arch: str) -> list[Site]:
    if _layerless(kind):
        return [Site(kind)]
    return [Site(kind, 0), Site(kind, 1)]


def _no_site(kind: str, arch: str) -> bool:
    """GPT-NeoX's parallel residual has no resid_mid; both backends must say so."""
    return arch == "neox" and kind == "resid_mid"


def _assert_both_refuse(pair, fn):
    for model in pair.values():
        with pytest.raises(SiteError, match="parallel residual"):
            fn(model)


def test_shape_and_weights_agree(pair):
    tl, nn = (pair[name] for name in BACKEND_NAMES)
    assert tl.shape == nn.shape
    w_tl, w_nn = tl.weights(), nn.weights()
    for field in ("W_U", "b_U", "W_E", "W_O", "W_in", "W_out"):
        torch.testing.assert_close(getattr(w_nn, field), getattr(w_tl, field), atol=ATOL, rtol=0)
    resid = torch.randn(3, tl.shape.d_model, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(nn.unembed(resid), tl.unembed(resid), atol=ATOL, rtol=0)


def test_logits_agree(pair, tiny_tokens):
    logits = _assert_agree(pair, lambda m: m.logits(tiny_tokens))
    assert logits.shape == (*tiny_tokens.shape, pair["nnsight"].shape.d_vocab)


@pytest.mark.parametrize("kind", SITE_KINDS)
def test_cache_agrees(pair, arch, tiny_tokens, kind):
    sites = _sites_for(kind, arch)

    def cache(model):
        _, c = model.run_with_cache(tiny_tokens, sites)
        return {s: c[s] for s in sites}

    if _no_site(kind, arch):
        return _assert_both_refuse(pair, cache)
    _assert_agree(pair, cache)


def _selected_patch(kind: str, layer: int | None, shape) -> tuple[Site, object]:
    """A site with selections and a patch (value or function) for it."""
    g = torch.Generator().manual_seed(sum(map(ord, kind)))
    batch = 4
    if kind in ("attn_head", "q", "k", "v"):
        # Large: the tiny models are initialised with small weights.
        return Site(kind, layer, head=2, pos=3), 10 * torch.randn(batch, shape.d_head, generator=g)
    if kind == "pattern":
        row = torch.softmax(torch.randn(batch, 8, generator=g), -1)
        return Site(kind, layer, head=1, pos=5), row
    if kind == "mlp_post":
        return Site(kind, layer, neuron=7, pos=-1), torch.full((batch,), 3.0)
    if kind == "resid_post":
        return Site(kind, layer, pos=4), lambda x: -2 * x
    return Site(kind, layer, pos=2), torch.randn(batch, shape.d_model, generator=g)


@pytest.mark.parametrize("kind", SITE_KINDS)
def test_patch_agrees(pair, arch, tiny_tokens, kind):
    layer = None if _layerless(kind) else 0
    site, patch = _selected_patch(kind, layer, pair["nnsight"].shape)
    if _no_site(kind, arch):
        return _assert_both_refuse(pair, lambda m: m.run_with_patches(tiny_tokens, {site: patch}))
    clean = pair["transformer_lens"].logits(tiny_tokens)
    patched = _assert_agree(pair, lambda m: m.run_with_patches(tiny_tokens, {site: patch}))
    assert (patched - clean).abs().max() > 1e-3, "the patch must change the output"


def test_many_sites_of_one_layer_in_one_pass(pair, arch, tiny_tokens):
    """Sites whose nnsight access points interleave, patched and cached together."""
    kinds = ["resid_pre", "q", "k", "v", "pattern", "attn_head", "attn_out", "mlp_post",
             "mlp_out", "resid_post"]
    if arch != "neox":
        kinds.append("resid_mid")
    shape = pair["nnsight"].shape
    patches = {
        Site("v", 1, head=0): lambda x: 0.5 * x,
        Site("resid_mid", 1, pos=1) if arch != "neox" else Site("attn_out", 1, pos=1): lambda x: x + 1,
        Site("mlp_post", 1, neuron=3): torch.zeros(()),
        Site("resid_pre", 1, pos=0): torch.zeros(shape.d_model),
    }
    sites = [Site(kind, 1) for kind in kinds] + [Site("embed"), Site("final_resid")]

    def run(model):
        logits, cache = model.run_with_cache(tiny_tokens, sites, patches=patches)
        return {"logits": logits, **{s.label: cache[s] for s in sites}}

    _assert_agree(pair, run)


@pytest.mark.parametrize("kind", GRAD_KINDS)
def test_gradients_agree(pair, arch, tiny_tokens, kind):
    sites = _sites_for(kind, arch) + [Site("resid_post", 1, pos=-1)]

    def metric(logits):
        return logits[:, -1, 3].sum() - logits[:, -1, 5].sum()

    def grads(model):
        g = model.gradients(tiny_tokens, sites, metric)
        return {"value": g.value, **{s.label: g.gradients[s] for s in sites}}

    if _no_site(kind, arch):
        return _assert_both_refuse(pair, grads)
    got = _assert_agree(pair, grads)
    assert any(v.abs().sum() > 0 for k, v in got.items() if k != "value")


def test_bad_patch_raises_site_error_on_both(pair, tiny_tokens):
    for model in pair.values():
        with pytest.raises(SiteError, match="does not broadcast"):
            model.run_with_patches(tiny_tokens, {Site("mlp_out", 0): torch.zeros(5)})


def test_remote_request_serializes(parity_dirs, arch, tiny_tokens, pair):
    """nnsight's serialize/deserialize dry run of an NDIF request gives the local logits."""
    from arithinterp.models import Model
    from arithinterp.models.backends.nnsight_backend import NNsightBackend

    backend = NNsightBackend.from_pretrained(str(parity_dirs[arch]), remote="local")
    dry = Model(backend, name=arch, spec="<dry run>")
    site = Site("attn_head", 0, head=1)
    patch = {site: torch.zeros(8)}
    torch.testing.assert_close(
        dry.run_with_patches(tiny_tokens, patch),
        pair["nnsight"].run_with_patches(tiny_tokens, patch),
        atol=0, rtol=0,
    )


# -- loading errors ----------------------------------------------------------
@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_pickled_weights_are_refused(tiny_hf_dirs, tmp_path, backend):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_hf_dirs["gpt2"] / name, pickled / name)
    from safetensors.torch import load_file

    torch.save(load_file(tiny_hf_dirs["gpt2"] / "model.safetensors"), pickled / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="safetensors") as info:
        load_model(str(pickled), backend=backend)
    assert "pytorch_model.bin" in str(info.value)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("spec", ["/no/such/model/dir", "./not-here", "a/b/c", ""])
def test_bogus_spec_raises(backend, spec):
    with pytest.raises(ModelLoadError):
        load_model(spec, backend=backend)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_directory_without_config_raises(tmp_path, backend):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(str(tmp_path), backend=backend)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_unknown_hub_name_fails_fast(backend):
    start = time.perf_counter()
    with pytest.raises(ModelLoadError):
        load_model("arithinterp-test/no-such-model", backend=backend)
    assert time.perf_counter() - start < 30


def test_unsupported_architecture_lists_supported_types(tiny_hf_dirs, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(tiny_hf_dirs["gpt2"], odd)
    config = json.loads((odd / "config.json").read_text())
    config["model_type"] = "gptj"
    config["architectures"] = ["GPTJForCausalLM"]
    (odd / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="gptj") as info:
        load_model(str(odd), backend="nnsight")
    for supported in ("gpt2", "llama", "qwen2", "mistral", "gpt_neox"):
        assert supported in str(info.value)
