"""TransformerLens 4.x backend (``TransformerBridge``).

``HookedTransformer`` no longer exists in TransformerLens 4; HF models load
with ``TransformerBridge.boot_transformers`` (local directories work) and
config-built models with ``TransformerBridge.boot_native``.

One quirk shapes this module: in the bridge, ``blocks.L.hook_resid_mid`` is
an alias of the second norm's input. Replacing it changes what the MLP reads
but not the residual skip connection, so a resid_mid patch through that hook
would be silently wrong. ``resid_mid`` is therefore implemented on
``hook_resid_pre`` + ``hook_attn_out`` (``resid_mid = resid_pre + attn_out``),
and a replacement ``x`` is written as ``attn_out := x - resid_pre``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch

from arithinterp.errors import ModelLoadError, SiteError
from arithinterp.models.backends.base import Backend, HookFn, Weights, limit_tokenizer_context
from arithinterp.models.site import ModelShape, Site

_HOOK_NAMES = {
    "embed": "hook_embed",
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "attn_head": "blocks.{layer}.attn.hook_z",
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "mlp_post": "blocks.{layer}.mlp.hook_post",
    "final_resid": "ln_final.hook_out",
}


class _SafetensorsOnly:
    """A model class whose ``from_pretrained`` loads safetensors only: without
    ``use_safetensors=True`` transformers falls back to a pickled ``pytorch_model.bin``."""

    def __init__(self, auto_class: Any):
        self.auto_class = auto_class

    def from_pretrained(self, name: str, **kwargs: Any) -> Any:
        return self.auto_class.from_pretrained(name, use_safetensors=True, **kwargs)


def _hook_name(site: Site) -> str:
    return _HOOK_NAMES[site.kind].format(layer=site.layer)


def _as_tl_hook(fn: HookFn):
    def hook(activation: torch.Tensor, hook: Any = None) -> torch.Tensor | None:
        return fn(activation)

    return hook


class TransformerLensBackend(Backend):
    """A model loaded through ``transformer_lens.model_bridge.TransformerBridge``."""

    name = "transformer_lens"

    def __init__(self, bridge: Any, tokenizer: Any, *, device: torch.device, dtype: torch.dtype):
        self.bridge = bridge
        self.bridge.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        cfg = bridge.cfg
        self.shape = ModelShape(
            n_layers=int(cfg.n_layers),
            n_heads=int(cfg.n_heads),
            d_model=int(cfg.d_model),
            d_head=int(cfg.d_head),
            d_mlp=int(cfg.d_mlp),
            d_vocab=int(cfg.d_vocab),
            n_ctx=int(cfg.n_ctx),
            act_fn=str(cfg.act_fn),
            normalization=str(cfg.normalization_type),
            n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads),
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        device_map: str | dict[str, Any] | None = None,
    ) -> TransformerLensBackend:
        """Load an HF directory or hub name; ``device_map`` (e.g. ``"auto"``) splits the
        model across devices through accelerate, in place of ``device``."""
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            # The directory's own tokenizer, as nnsight loads it: the bridge's
            # configured copy may add a BOS token the model never saw in training.
            tokenizer = AutoTokenizer.from_pretrained(path)
            placement = {"device_map": device_map} if device_map is not None else {"device": device}
            bridge = TransformerBridge.boot_transformers(
                path, dtype=dtype, tokenizer=tokenizer,
                model_class=_SafetensorsOnly(AutoModelForCausalLM), **placement
            )
        except Exception as err:  # the bridge raises many kinds; all mean "cannot load"
            raise ModelLoadError(
                f"TransformerLens could not load {path!r}: {type(err).__name__}: {err}"
            ) from err
        if device_map is not None:  # tokens go where the embedding lives
            device = bridge.original_model.get_input_embeddings().weight.device
        backend = cls(bridge, tokenizer, device=torch.device(device), dtype=dtype)
        limit_tokenizer_context(tokenizer, backend.shape.n_ctx)
        return backend

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        *,
        tokenizer: Any = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> TransformerLensBackend:
        """Build a randomly initialised TL-native model from a config dict (``boot_native``)."""
        from transformer_lens.model_bridge import TransformerBridge

        try:
            bridge = TransformerBridge.boot_native(dict(config), tokenizer=tokenizer, device=device, dtype=dtype)
        except Exception as err:  # TransformerLens raises many kinds for a bad config
            raise ModelLoadError(
                f"TransformerLens could not build a model from the config dict: {type(err).__name__}: {err}"
            ) from err
        return cls(bridge, tokenizer, device=torch.device(device), dtype=dtype)

    def module(self) -> torch.nn.Module:
        return self.bridge

    def hf_model(self) -> torch.nn.Module | None:
        from transformers import PreTrainedModel

        hf = getattr(self.bridge, "original_model", None)
        return hf if isinstance(hf, PreTrainedModel) else None

    def run(
        self, tokens: torch.Tensor, hooks: Mapping[Site, HookFn], *, grad: bool = False
    ) -> torch.Tensor:
        fwd_hooks: list[tuple[str, Any]] = []
        mid_hooks = {site.layer: fn for site, fn in hooks.items() if site.kind == "resid_mid"}
        if mid_hooks and getattr(self.bridge.cfg, "parallel_attn_mlp", False):
            raise SiteError(
                "resid_mid: this model uses a parallel residual (attention and MLP both read "
                "resid_pre), so there is no point between attention and MLP; use resid_pre, "
                "attn_out, mlp_out or resid_post"
            )
        for site, fn in hooks.items():
            if site.kind != "resid_mid":
                fwd_hooks.append((_hook_name(site), _as_tl_hook(fn)))
        for layer, fn in mid_hooks.items():
            fwd_hooks.extend(_resid_mid_hooks(layer, fn))
        context = contextlib.nullcontext() if grad else torch.no_grad()
        with context:
            return self.bridge.run_with_hooks(tokens.to(self.device), fwd_hooks=fwd_hooks)

    def weights(self) -> Weights:
        b = self.bridge
        b_U = b.b_U if b.b_U is not None else torch.zeros(self.shape.d_vocab)
        return Weights(W_U=b.W_U, b_U=b_U, W_E=b.W_E, W_O=b.W_O, W_in=b.W_in, W_out=b.W_out)

    def final_norm(self, resid: torch.Tensor) -> torch.Tensor:
        return self.bridge.ln_final(resid)


def _resid_mid_hooks(layer: int, fn: HookFn) -> list[tuple[str, Any]]:
    """Hooks that expose ``resid_pre + attn_out`` as resid_mid and write replacements back."""
    stash: dict[str, torch.Tensor] = {}

    def keep_pre(activation: torch.Tensor, hook: Any = None) -> None:
        stash["pre"] = activation

    def via_attn_out(attn_out: torch.Tensor, hook: Any = None) -> torch.Tensor | None:
        pre = stash.pop("pre")
        mid = pre + attn_out
        new = fn(mid)
        if new is None:
            return None
        return new - pre

    # Registered after any resid_pre / attn_out hook of the same layer, so a
    # patch of those sites is already in place when resid_mid is read.
    return [
        (f"blocks.{layer}.hook_resid_pre", keep_pre),
        (f"blocks.{layer}.hook_attn_out", via_attn_out),
    ]
