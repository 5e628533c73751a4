"""Local replacement models: the same forward pass with a different backward pass.

Gradient-based attribution linearises the model around one run. How good that
linearisation is depends on which parts of the network the gradient is allowed
to see. A :class:`ReplacementBackend` runs the model's own weights through the
functional forward (:mod:`arithinterp.models.functional`), so its *values* equal
the model's (the tests check logits and every site against the backend), and
changes only what flows backwards, each change optional (:class:`Rules`):

- ``freeze_norm``: every LayerNorm / RMSNorm scale ``1/σ(x)`` is held at its value
  on the run (``x * scale.detach()``). This is circuit-tracer's local replacement
  model and LRP's LN-rule (Ali et al. 2022): the norm becomes linear in ``x``, so
  a direction nothing reads no longer moves every other dimension through ``σ``.
- ``identity_act``: the MLP activation passes the signal through as
  ``x * (act(x) / x).detach()`` (RelP's identity rule; for ReLU it is the gradient).
- ``half_gate``: a gated MLP's product ``act(gate) * up`` sends half of the
  relevance to each factor (RelP's half rule, Arras et al. 2019).
- ``constant_pattern``: attention weights are constants in the value path
  (LRP's AH-rule): ``z = pattern.detach() @ v``, so nothing flows to queries or keys.

The result is a :class:`~arithinterp.models.Model` like any other: sites, caches,
patches and gradients mean exactly what they mean on the backend it wraps.
Families the functional forward does not run (GPT-NeoX), models built without a
Hugging Face module, and layers that have no rule raise :class:`MethodError`
naming the layer, before any pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch

from arithinterp.errors import MethodError, ModelLoadError
from arithinterp.models.backends.base import Backend, HookFn, Weights
from arithinterp.models.backends.hf_arch import ARCHITECTURES, architecture_for
from arithinterp.models.functional import _GELU_TANH, FunctionalTransformer
from arithinterp.models.model import Model
from arithinterp.models.site import Site

__all__ = ["ReplacementBackend", "Rules", "check_rules", "replacement_model"]

#: Activations with an identity rule, and ``act(x)/x`` at ``x = 0`` (its derivative there).
_ACT_AT_ZERO = {**dict.fromkeys(_GELU_TANH, 0.5), "gelu": 0.5, "relu": 0.0, "silu": 0.5, "swish": 0.5}
_NORM_CLASSES = ("LayerNorm", "RMSNorm")


@dataclass(frozen=True)
class Rules:
    """Which parts of the backward pass a replacement model changes (see the module docs)."""

    freeze_norm: bool = False
    identity_act: bool = False
    half_gate: bool = False
    constant_pattern: bool = False

    @property
    def plain(self) -> bool:
        """No rule: the backward pass is the model's own gradient."""
        return not any(asdict(self).values())


def _hf(model: Model, what: str) -> torch.nn.Module:
    hf = model.backend.hf_model()
    if hf is None:
        raise MethodError(
            f"{what} runs the model's Hugging Face weights through the functional forward, and "
            f"{model.name!r} has none (a config-built or remote model); load it from an HF directory"
        )
    return hf


def check_rules(model: Model, rules: Rules, what: str = "this method") -> None:
    """``MethodError`` naming the first layer a replacement with ``rules`` cannot handle."""
    if isinstance(model.backend, ReplacementBackend):
        return
    hf = _hf(model, what)
    cfg = hf.config
    arch = ARCHITECTURES.get(getattr(cfg, "model_type", None))
    if arch is None or not arch.functional:
        layer = f"{arch.layers}.0" if arch is not None else type(hf).__name__
        family = arch.family if arch is not None else getattr(cfg, "model_type", "?")
        raise MethodError(
            f"{what}: no rule for layer {layer} ({family} blocks are not run by the functional "
            f"forward; supported families: GPT-2, Llama/Qwen2/Mistral)"
        )
    for i, block in enumerate(hf.get_submodule(arch.layers)):
        for path in (arch.ln1, arch.ln2):
            norm = block.get_submodule(path)
            norm = getattr(norm, "original_component", None) or norm  # a TransformerLens bridge wraps it
            if not type(norm).__name__.endswith(_NORM_CLASSES):
                raise MethodError(f"{what}: no rule for layer {arch.layers}.{i}.{path} "
                                  f"({type(norm).__name__} is not a LayerNorm or RMSNorm)")
        if rules.identity_act:
            act = str(getattr(cfg, "hidden_act", None) or getattr(cfg, "activation_function", "gelu"))
            if act not in _ACT_AT_ZERO:
                raise MethodError(
                    f"{what}: no rule for layer {arch.layers}.{i}.{arch.mlp} (activation {act!r}); "
                    f"the identity rule covers {', '.join(sorted(_ACT_AT_ZERO))}"
                )
    try:
        FunctionalTransformer(hf)
    except ModelLoadError as err:
        raise MethodError(f"{what}: {err}") from None


def replacement_model(model: Model, rules: Rules, what: str = "this method") -> Model:
    """``model`` with the backward pass of ``rules`` (the same model when no rule is on)."""
    if rules.plain or isinstance(model.backend, ReplacementBackend):
        return model
    check_rules(model, rules, what)
    backend = ReplacementBackend(model.backend, rules)
    return Model(backend, name=model.name, spec=model.spec, default_tasks=model.default_tasks)


class ReplacementBackend(Backend):
    """Runs a loaded model's HF weights functionally, with the backward pass of :class:`Rules`."""

    name = "replacement"

    def __init__(self, base: Backend, rules: Rules):
        hf = base.hf_model()
        if hf is None:
            raise ModelLoadError("a replacement model needs the model's Hugging Face module")
        self.base = base
        self.rules = rules
        self.ft = FunctionalTransformer(hf)
        self.arch = architecture_for(hf.config, functional=True)
        self.shape = base.shape
        self.tokenizer = base.tokenizer
        self.device = base.device
        self.dtype = base.dtype
        act = self.shape.act_fn
        self._act_at_zero = _ACT_AT_ZERO.get(act, 0.5)

    def module(self) -> torch.nn.Module:
        return self.ft.hf_model

    def hf_model(self) -> torch.nn.Module | None:
        return self.ft.hf_model

    def weights(self) -> Weights:
        return self.base.weights()

    def final_norm(self, resid: torch.Tensor) -> torch.Tensor:
        return self._norm(resid, self.ft.ln_final)

    # -- the forward pass ------------------------------------------------------
    def run(self, tokens: torch.Tensor, hooks: Mapping[Site, HookFn], *, grad: bool = False) -> torch.Tensor:
        context = torch.enable_grad() if grad else torch.no_grad()
        with context:
            return self._forward(tokens.to(self.device), hooks)

    def _forward(self, tokens: torch.Tensor, hooks: Mapping[Site, HookFn]) -> torch.Tensor:
        ft = self.ft

        def at(kind: str, value: torch.Tensor, layer: int | None = None) -> torch.Tensor:
            fn = hooks.get(Site(kind, layer))
            if fn is None:
                return value
            new = fn(value)
            return value if new is None else new

        embed = at("embed", ft.embed(tokens))
        resid = ft.resid0(tokens, embed)
        for layer in range(ft.n_layers):
            resid = at("resid_pre", resid, layer)
            attn_out = self._attention(layer, resid, at)
            if Site("resid_mid", layer) in hooks:
                mid = at("resid_mid", resid + attn_out, layer)
            else:
                mid = resid + attn_out
            post = at("mlp_post", self._mlp_post(layer, mid), layer)
            mlp_out = at("mlp_out", ft.mlp_out(layer, post), layer)
            resid = at("resid_post", mid + mlp_out, layer)
        final = at("final_resid", self._norm(resid, ft.ln_final))
        return ft.unembed(final)

    def _attention(self, layer: int, resid: torch.Tensor, at) -> torch.Tensor:
        ft, blk = self.ft, self.ft.blocks[layer]
        x = self._norm(resid, blk["ln1"])
        b, p, _ = x.shape

        def proj(W, bias, heads):
            out = x @ W
            return (out if bias is None else out + bias).view(b, p, heads, ft.d_head)

        q = at("q", proj(blk["W_Q"], blk["b_Q"], ft.n_heads), layer)
        k = at("k", proj(blk["W_K"], blk["b_K"], ft.n_kv_heads), layer)
        v = at("v", proj(blk["W_V"], blk["b_V"], ft.n_kv_heads), layer)
        positions = torch.arange(p, device=x.device)
        pattern = at("pattern", ft.pattern(ft.rotate(q, positions), ft.rotate(k, positions), 0), layer)
        if self.rules.constant_pattern:
            pattern = pattern.detach()
        z = at("attn_head", ft.z(pattern, v), layer)
        return at("attn_out", ft.attn_out(layer, z), layer)

    def _mlp_post(self, layer: int, mid: torch.Tensor) -> torch.Tensor:
        blk = self.ft.blocks[layer]
        x = self._norm(mid, blk["ln2"])
        up = x @ blk["W_in"]
        if blk["b_in"] is not None:
            up = up + blk["b_in"]
        if blk["W_gate"] is None:
            return self._act(up)
        gate = self._act(x @ blk["W_gate"])
        if self.rules.half_gate:
            return 0.5 * (gate * up.detach() + gate.detach() * up)
        return gate * up

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ft.act(x)
        if not self.rules.identity_act:
            return y
        zero = x == 0
        ratio = torch.where(zero, torch.full_like(x, self._act_at_zero), y / torch.where(zero, 1.0, x))
        return x * ratio.detach()

    def _norm(self, x: torch.Tensor, wb: tuple) -> torch.Tensor:
        w, b = wb
        if self.ft.norm == "LN":
            centred = x - x.mean(-1, keepdim=True)
            scale = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + self.ft.eps)
            if self.rules.freeze_norm:
                scale = scale.detach()
            out = centred * scale * w
            return out if b is None else out + b
        x32 = x.float()
        scale = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.ft.eps)
        if self.rules.freeze_norm:
            scale = scale.detach()
        return w * (x32 * scale).to(x.dtype)
