"""AtP*, frozen norms, RelP and IG on activations against an independent implementation:
plain autograd on the Hugging Face model, each rule written as a torch hook on the HF
modules (no arithinterp code in the oracle's forward or backward), on GPT-2 (LayerNorm)
and Llama (RMSNorm, gated MLP) through both backends. Plus the replacement model's
parity with the backends, the bad inputs of the issue, and a hand-set decoy model."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch

from arithinterp.errors import MethodError
from arithinterp.methods.attribution import attribution_patch
from arithinterp.methods.edge_attribution import edge_attribution_patch
from arithinterp.methods.metrics import logit_diff, tokenize_pairs
from arithinterp.methods.patching import patch_activations
from arithinterp.models import Model, Site, load_model
from arithinterp.models.replacement import ReplacementBackend, Rules
from arithinterp.tasks import TaskSpec, generate, make_pairs
from tests.conftest import DIGIT_VOCAB, digit_tokenizer

FAST = {"progress": False, "n_boot": 2, "normalize": False}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_intra_op_thread):
    yield


@pytest.fixture(scope="module")
def pairs():
    ps = generate(TaskSpec(operation="add", digits=2, format="fixed", n=6, seed=1))
    return make_pairs(ps, "operand_a")


@pytest.fixture(scope="module")
def loaded(tiny_hf_dirs):
    return {(arch, backend): load_model(str(path), backend=backend)
            for arch, path in tiny_hf_dirs.items() for backend in ("transformer_lens", "nnsight")}


# -- the oracle: plain autograd on the HF model ---------------------------------------------------


class HFOracle:
    """Attribution of head outputs (``z``, the input of the attention output projection)
    computed with plain autograd on a freshly loaded HF model; rules are torch hooks."""

    def __init__(self, path, arch: str):
        from transformers import AutoModelForCausalLM

        self.hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", use_safetensors=True)
        self.hf.eval()
        self.arch = arch
        llama = arch == "llama"
        self.blocks = list(self.hf.model.layers if llama else self.hf.transformer.h)
        self.z_modules = [b.self_attn.o_proj if llama else b.attn.c_proj for b in self.blocks]
        final = self.hf.model.norm if llama else self.hf.transformer.ln_f
        self.norms = [n for b in self.blocks for n in ((b.input_layernorm, b.post_attention_layernorm) if llama
                                                        else (b.ln_1, b.ln_2))] + [final]
        self.n_heads = self.hf.config.num_attention_heads

    @contextlib.contextmanager
    def rules(self, *, freeze_norm=False, identity_act=False, half_gate=False, constant_pattern=False):
        handles = []
        if freeze_norm:
            handles += [n.register_forward_hook(_frozen_norm) for n in self.norms]
        for block in self.blocks:
            mlp = block.mlp
            act = mlp.act_fn if self.arch == "llama" else mlp.act
            store = {}
            if identity_act:
                handles.append(act.register_forward_hook(_identity_rule))
            if half_gate and self.arch == "llama":
                handles.append(act.register_forward_hook(lambda m, i, o, s=store: s.__setitem__("a", o)))
                handles.append(mlp.up_proj.register_forward_hook(lambda m, i, o, s=store: s.__setitem__("u", o)))
                handles.append(mlp.down_proj.register_forward_pre_hook(
                    lambda m, i, s=store: (0.5 * (s["a"] * s["u"].detach() + s["a"].detach() * s["u"]),)))
        softmax = torch.nn.functional.softmax
        if constant_pattern:
            torch.nn.functional.softmax = lambda *a, **k: softmax(*a, **k).detach()
        try:
            yield
        finally:
            torch.nn.functional.softmax = softmax
            for h in handles:
                h.remove()

    def z_and_grads(self, batch, tokens, patch_layer=None, patch_value=None):
        """Head outputs ``[layer, b, pos, n_heads * d_head]`` and the metric's gradient at them."""
        zs = {}

        def grab(layer):
            def hook(module, inputs):
                z = inputs[0]
                if layer == patch_layer:
                    z = patch_value.clone()
                z = z if z.requires_grad else z.detach().requires_grad_(True)
                zs[layer] = z
                return (z,)
            return hook

        handles = [m.register_forward_pre_hook(grab(i)) for i, m in enumerate(self.z_modules)]
        try:
            logits = self.hf(tokens).logits
        finally:
            for h in handles:
                h.remove()
        metric = logit_diff(logits[:, batch.answer_positions], batch.clean_answer, batch.corrupt_answer).sum()
        layers = sorted(zs)
        grads = torch.autograd.grad(metric, [zs[i] for i in layers])
        return torch.stack([zs[i].detach() for i in layers]), torch.stack(grads)

    def attribution(self, batch, *, method="atp", ig_steps=1, **rules):
        """Mean over pairs of ``(z_clean - z_corrupt) . grad`` per (layer, head, pos)."""
        with self.rules(**rules):
            z_t, g = self.z_and_grads(batch, batch.corrupt)
            z_s, _ = self.z_and_grads(batch, batch.clean)
            if method == "ig_activations":
                total = g.clone()
                for layer in range(len(self.blocks)):
                    for k in range(1, ig_steps):
                        point = z_t[layer] + (k / ig_steps) * (z_s[layer] - z_t[layer])
                        total[layer] += self.z_and_grads(batch, batch.corrupt, layer, point)[1][layer]
                g = total / ig_steps
        prod = (z_s - z_t) * g  # [layer, b, pos, n_heads * d_head]
        layer, b, pos, _ = prod.shape
        per_head = prod.reshape(layer, b, pos, self.n_heads, -1).sum(-1)  # [layer, b, pos, head]
        return per_head.mean(1).permute(0, 2, 1).double().numpy()  # [layer, head, pos]


def _frozen_norm(module, inputs, output):
    x = inputs[0]
    w = module.weight
    if isinstance(module, torch.nn.LayerNorm):
        centred = x - x.mean(-1, keepdim=True)
        scale = 1.0 / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + module.eps)
        return centred * scale.detach() * w + module.bias
    scale = 1.0 / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)
    return w * (x * scale.detach())


def _identity_rule(module, inputs, output):
    x = inputs[0]
    return x * torch.nan_to_num(output / x, nan=0.5).detach()


RULES = {
    "atp": {},
    "relp": {"identity_act": True, "half_gate": True, "constant_pattern": True},
}


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("method,freeze_norm", [("atp", True), ("relp", True), ("relp", False),
                                                ("ig_activations", False), ("ig_activations", True)])
def test_every_gradient_method_equals_plain_autograd_on_the_hf_model(loaded, tiny_hf_dirs, pairs, arch, backend,
                                                                      method, freeze_norm):
    model = loaded[(arch, backend)]
    batch = tokenize_pairs(pairs, model.tokenizer)
    ours = attribution_patch(model, batch, kind="attn_head", method=method, freeze_norm=freeze_norm, ig_steps=3,
                             **FAST).effect.transpose("layer", "head", "pos").values
    oracle = HFOracle(tiny_hf_dirs[arch], arch)
    rules = RULES.get(method, {})
    want = oracle.attribution(batch, method=method, ig_steps=3, freeze_norm=freeze_norm, **rules)
    scale = np.abs(want).max()
    assert scale > 1e-4
    np.testing.assert_allclose(ours, want, atol=2e-4 * scale, rtol=1e-3)
    # ... and every rule changes the numbers (the test would not see a rule that is ignored).
    if method != "ig_activations":
        plain = oracle.attribution(batch)
        assert np.abs(plain - want).max() > 1e-3 * scale


def test_freeze_norm_is_plain_atp_where_the_norm_cannot_couple(loaded, pairs):
    # At the last norm the gradient w.r.t. final_resid does not pass through any norm,
    # so freezing changes nothing there, while at resid_post of the last layer it does.
    model = loaded[("gpt2", "transformer_lens")]
    plain = attribution_patch(model, pairs, kind="final_resid", **FAST).values.values
    frozen = attribution_patch(model, pairs, kind="final_resid", freeze_norm=True, **FAST).values.values
    np.testing.assert_allclose(frozen, plain, atol=1e-6)
    a = attribution_patch(model, pairs, kind="resid_post", **FAST).values.values
    b = attribution_patch(model, pairs, kind="resid_post", freeze_norm=True, **FAST).values.values
    assert np.abs(a - b).max() > 1e-4


# -- AtP*: the QK fix against literal recomputation -----------------------------------------------


def _literal_qk(oracle: HFOracle, batch, kind: str, layer: int) -> np.ndarray:
    """For every (head, pos): patch that one query / key in an HF forward of the corrupt run,
    read the new attention weights and take ``Σ (A' - A) . ∂metric/∂A`` (AtP* eqs. 7, 9-10)."""
    hf, n_heads = oracle.hf, oracle.n_heads
    cfg = hf.config
    kv_heads = getattr(cfg, "num_key_value_heads", None) or n_heads
    d_head = cfg.hidden_size // n_heads
    out = oracle.hf(batch.corrupt, output_attentions=True)
    attn = out.attentions[layer]
    metric = logit_diff(out.logits[:, batch.answer_positions], batch.clean_answer, batch.corrupt_answer).sum()
    grad = torch.autograd.grad(metric, attn)[0].detach()
    attn = attn.detach()
    proj = _projection(oracle, layer, kind)
    with torch.no_grad():
        source = {}
        h = proj.register_forward_hook(lambda m, i, o: source.__setitem__("x", o.detach()))
        hf(batch.clean)
        h.remove()
    heads = n_heads if kind == "q" else kv_heads
    seq = batch.corrupt.shape[1]
    result = np.zeros((heads, seq))
    for head in range(heads):
        for pos in range(seq):
            cols = _columns(oracle, kind, head, d_head)

            def patch(m, i, o, cols=cols, pos=pos):
                o = o.clone()
                o[:, pos, cols] = source["x"][:, pos, cols]
                return o

            handle = proj.register_forward_hook(patch)
            with torch.no_grad():
                new = hf(batch.corrupt, output_attentions=True).attentions[layer]
            handle.remove()
            result[head, pos] = float(((new - attn) * grad).sum() / len(batch.corrupt))
    return result


def _projection(oracle: HFOracle, layer: int, kind: str):
    block = oracle.blocks[layer]
    if oracle.arch == "llama":
        return getattr(block.self_attn, f"{kind}_proj")
    return block.attn.c_attn


def _columns(oracle: HFOracle, kind: str, head: int, d_head: int) -> slice:
    if oracle.arch == "llama":
        return slice(head * d_head, (head + 1) * d_head)
    offset = {"q": 0, "k": oracle.hf.config.hidden_size}[kind]
    return slice(offset + head * d_head, offset + (head + 1) * d_head)


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("kind", ["q", "k"])
def test_atp_star_qk_fix_equals_literal_softmax_recomputation(loaded, tiny_hf_dirs, pairs, arch, backend, kind):
    model = loaded[(arch, backend)]
    batch = tokenize_pairs(pairs, model.tokenizer)
    ours = attribution_patch(model, batch, kind=kind, method="atp_star", **FAST)
    oracle = HFOracle(tiny_hf_dirs[arch], arch)
    for layer in range(model.shape.n_layers):
        want = _literal_qk(oracle, batch, kind, layer)
        got = ours.effect.sel(layer=layer).transpose("head", "pos").values
        np.testing.assert_allclose(got, want, atol=1e-4 * max(np.abs(want).max(), 1e-3), rtol=1e-3)
    # GradDrop (eq. 11) is unsigned and recorded beside the signed estimate.
    assert (ours.extras["graddrop"].values >= 0).all()


@pytest.mark.parametrize("kind", ["q", "k"])
def test_atp_star_is_closer_to_exact_patching_where_softmax_saturates(tiny_hf_dirs, tmp_path, pairs, kind):
    from tests.conftest import scaled_variant

    model = load_model(str(scaled_variant(tiny_hf_dirs["gpt2"], tmp_path / "sharp", scale=12.0)))
    opts = dict(kind=kind, **FAST)
    exact = patch_activations(model, pairs, engine="literal", **opts).values.values
    err = {m: np.abs(attribution_patch(model, pairs, method=m, **opts).values.values - exact).sum()
           for m in ("atp", "atp_star")}
    assert err["atp_star"] < 0.6 * err["atp"], err


def test_graddrop_equals_the_sum_of_cut_backward_passes(loaded, pairs):
    model = loaded[("gpt2", "transformer_lens")]
    res = attribution_patch(model, pairs, kind="attn_head", method="atp_star", **FAST)
    batch = tokenize_pairs(pairs, model.tokenizer)
    # Literal: for each layer l, zero the gradient through layer l's attention and MLP writes.
    L = model.shape.n_layers
    clean = model.run_with_cache(batch.clean, [Site("attn_head", layer) for layer in range(L)])[1]
    total = 0.0
    for drop in range(L):
        patches = {Site("attn_out", drop): lambda a: a.detach(), Site("mlp_out", drop): lambda a: a.detach()}
        g = model.gradients(batch.corrupt, [Site("attn_head", layer) for layer in range(L)],
                            lambda lg: logit_diff(lg[:, batch.answer_positions], batch.clean_answer,
                                                  batch.corrupt_answer).sum(), patches=patches)
        est = torch.stack([((clean[Site("attn_head", layer)] - g.activations[Site("attn_head", layer)])
                            * g.gradients[Site("attn_head", layer)]).sum(-1) for layer in range(L)], 1)
        total = total + est.abs()  # [b, layer, pos, head]
    want = (total / (L - 1)).mean(0).permute(0, 2, 1).double().numpy()
    np.testing.assert_allclose(res.extras["graddrop"].transpose("layer", "head", "pos").values, want,
                               rtol=1e-4, atol=1e-6)


# -- the replacement model and edges ---------------------------------------------------------------


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_replacement_without_rules_is_the_backend(loaded, pairs, arch, backend):
    model = loaded[(arch, backend)]
    twin = Model(ReplacementBackend(model.backend, Rules()), name=model.name, spec=model.spec)
    batch = tokenize_pairs(pairs, model.tokenizer)
    sites = [Site(k, 1) for k in ("attn_head", "q", "k", "v", "pattern", "mlp_post", "resid_mid")]
    sites += [Site("final_resid"), Site("embed")]
    logits, cache = model.run_with_cache(batch.clean, sites)
    logits2, cache2 = twin.run_with_cache(batch.clean, sites)
    torch.testing.assert_close(logits2, logits, atol=1e-4, rtol=1e-4)
    for s in sites:
        torch.testing.assert_close(cache2[s], cache[s], atol=1e-4, rtol=1e-4)
    metric = lambda lg: lg[:, -1, :3].sum()  # noqa: E731
    g, g2 = model.gradients(batch.clean, sites[:6], metric), twin.gradients(batch.clean, sites[:6], metric)
    for s in sites[:6]:
        torch.testing.assert_close(g2.gradients[s], g.gradients[s], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("method,freeze_norm", [("relp", True), ("atp", True), ("ig_activations", False)])
def test_edge_sum_rule_holds_for_every_method(loaded, pairs, method, freeze_norm):
    # Edges out of the embedding add up to its node attribution under the same backward rules.
    model = loaded[("llama", "nnsight")]
    opts = dict(method=method, freeze_norm=freeze_norm, ig_steps=2, **FAST)
    edges = edge_attribution_patch(model, pairs, **opts)
    node = attribution_patch(model, pairs, kind="resid_pre", per_position=False, **opts).effect.sel(layer=0)
    if method == "ig_activations":  # the receivers' gradients are integrated, the node's is not
        return
    np.testing.assert_allclose(float(edges.values.sel(component="embed").sum()), float(node), rtol=1e-4, atol=1e-6)
    assert edges.meta.options["method"] == method and edges.meta.options["freeze_norm"] is freeze_norm


# -- bad input -------------------------------------------------------------------------------------


def test_ig_steps_below_one_is_a_method_error_before_any_pass(loaded, pairs, monkeypatch):
    model = loaded[("gpt2", "nnsight")]
    calls = []
    monkeypatch.setattr(model.backend, "run", lambda *a, **k: calls.append(1))
    for method in ("ig", "ig_activations"):
        with pytest.raises(MethodError, match="ig_steps"):
            attribution_patch(model, pairs, method=method, ig_steps=0, **FAST)
        with pytest.raises(MethodError, match="ig_steps"):
            edge_attribution_patch(model, pairs, method=method, ig_steps=0, **FAST)
    assert calls == []


def _tiny(path, **config):
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    if config.pop("neox", False):
        model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=len(DIGIT_VOCAB), hidden_size=32, num_hidden_layers=1,
                                                 num_attention_heads=4, intermediate_size=64,
                                                 max_position_embeddings=32))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(DIGIT_VOCAB), n_positions=32, n_embd=32, n_layer=2,
                                           n_head=4, **config))
    model.save_pretrained(path, safe_serialization=True)
    digit_tokenizer().save_pretrained(path)
    return str(path)


def test_relp_names_the_layer_it_has_no_rule_for(tmp_path, pairs, monkeypatch):
    tanh = load_model(_tiny(tmp_path / "tanh", activation_function="tanh"), backend="nnsight")
    calls = []
    monkeypatch.setattr(tanh.backend, "run", lambda *a, **k: calls.append(1))
    with pytest.raises(MethodError, match=r"transformer\.h\.0\.mlp.*'tanh'"):
        attribution_patch(tanh, pairs, method="relp", **FAST)
    with pytest.raises(MethodError, match=r"transformer\.h\.0\.mlp"):
        edge_attribution_patch(tanh, pairs, method="relp", **FAST)
    assert calls == []
    neox = load_model(_tiny(tmp_path / "neox", neox=True), backend="nnsight")
    with pytest.raises(MethodError, match=r"gpt_neox\.layers\.0"):
        attribution_patch(neox, pairs, method="relp", **FAST)
    with pytest.raises(MethodError, match=r"gpt_neox\.layers\.0"):
        attribution_patch(neox, pairs, freeze_norm=True, **FAST)


# -- a decoy: its output changes, nothing reads it -------------------------------------------------


def build_decoy(path):
    """The hand-set adder of ``test_circuits.build_planted`` with head L0H2 made a decoy whose
    output *changes*: it attends to operand ``a`` and writes ``√2 (cos θ_a, sin θ_a)`` (and the
    negated copy, so the residual keeps mean 0) into dims nothing reads. The write has the
    same norm for every digit, so LayerNorm's scale, and every exact patching effect of
    L0H2, is exactly 0; L0H3 writes nothing."""
    from transformers import GPT2LMHeadModel

    from tests.methods import test_circuits as tc

    tc.build_planted(path)
    hf = GPT2LMHeadModel.from_pretrained(path, use_safetensors=True)
    sd = hf.state_dict()
    w_qkv, w_o = sd["transformer.h.0.attn.c_attn.weight"], sd["transformer.h.0.attn.c_proj.weight"]
    with torch.no_grad():
        key = tc.D + 2 * tc.D_HEAD
        w_qkv[tc.POS + tc.HEAD_TARGET[2], key] = 0.0
        w_qkv[tc.POS + 0, key] = 1.0
        w_o[2 * tc.D_HEAD:] = 0.0
        for j in range(10):
            c, s = math.sqrt(2) * math.cos(2 * math.pi * j / 10), math.sqrt(2) * math.sin(2 * math.pi * j / 10)
            w_o[2 * tc.D_HEAD + j, tc.DEC:tc.DEC + 4] = torch.tensor([c, s, -c, -s])
    hf.save_pretrained(path, safe_serialization=True)
    digit_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def decoy(tmp_path_factory):
    model = load_model(build_decoy(tmp_path_factory.mktemp("decoy") / "model"))
    prompts = generate(TaskSpec(operation="add", digits=1, format="fixed", n=40, seed=3))
    return model, make_pairs(prompts, "random")


def test_on_the_decoy_model_frozen_norms_find_the_true_heads(decoy):
    from arithinterp.methods.attribution_calibration import RECOMMENDED

    model, pairs = decoy
    opts = dict(kind="attn_head", per_position=False, progress=False, n_boot=2)
    exact = patch_activations(model, pairs, engine="literal", **opts).values.sel(layer=0).values
    np.testing.assert_allclose(exact[2:], 0.0, atol=1e-5)  # the decoy and the silent head: no effect
    assert min(exact[:2]) > 0.4
    atp = attribution_patch(model, pairs, **opts).effect.sel(layer=0).values
    assert abs(atp[2]) > 0.05 and abs(atp[2]) > max(abs(atp[:2]))  # plain AtP ranks the decoy first
    method, freeze = RECOMMENDED
    best = attribution_patch(model, pairs, method=method, freeze_norm=freeze, **opts).effect.sel(layer=0).values
    assert abs(best[2]) < 0.05
    assert np.argmax(np.abs(best)) in (0, 1) and min(best[:2]) > 0.4
