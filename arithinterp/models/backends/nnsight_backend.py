"""nnsight 0.8 backend: a Hugging Face model driven through nnsight's tracing.

The model is an ``nnsight.TransformersModel`` (``task="text-generation"``; it
is what the deprecated ``LanguageModel`` name builds in 0.8) over the same HF
directory the TransformerLens backend loads, with eager attention so that the
attention weights exist as a tensor. Sites become module inputs and outputs
through the per-family table in :mod:`arithinterp.models.backends.hf_arch`;
user code never sees a module path.

Where each site is read and written (``block`` = one decoder layer):

=================  =========================================================
``embed``          token embedding output
``resid_pre``      block input
``q`` / ``k`` /    the query/key/value projection outputs, before any rotary
``v``              embedding (slices of the fused projection for GPT-2/NeoX)
``pattern``        the first argument of ``attention_weights @ value`` inside
                   the eager attention function (reached with nested
                   ``.source``), so a patched pattern changes the output
``attn_head``      input of the attention output projection, split into heads
``attn_out``       attention module output[0]
``resid_mid``      ``resid_pre + attn_out``; a replacement ``x`` is written
                   as ``attn_out := x - resid_pre`` (as in the TL backend)
``mlp_post``       input of the MLP output projection
``mlp_out``        MLP module output
``resid_post``     block output
``final_resid``    final norm output
=================  =========================================================

nnsight serves values in execution order and raises ``OutOfOrderError`` if a
location is asked for after it ran, so each layer's locations are visited in
the order above, each module location at most once, whatever the hook order.

Remote execution (NDIF): ``remote=True`` builds only a meta model here (no
weights are loaded) and passes ``remote=True`` to every ``.trace``, so the
forward pass runs on NDIF; configure the API key with
``nnsight.CONFIG.set_default_api_key(...)``. nnsight ships the trace body and
the hook functions by value (arithinterp is registered with ``nnsight.register``,
as NDIF does not have it installed), and only values marked ``.save()`` come
back. So the trace saves the logits, the dict the caching hooks filled, and for
gradients the metric and ``torch.autograd.grad`` run inside the trace, on NDIF,
and their values are saved (:meth:`NNsightBackend.run_collect`). The network path
is not tested here; ``remote="local"`` runs nnsight's serialize / deserialize dry
run of the same request in-process (with arithinterp hidden while it is rebuilt),
which the tests use for logits, caching, patching and gradients.
"""

from __future__ import annotations

import contextlib
import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Literal

import torch

from arithinterp.errors import ModelLoadError, SiteError
from arithinterp.models.backends.base import Backend, HookFn, Weights, limit_tokenizer_context
from arithinterp.models.backends.hf_arch import (
    HFArchitecture,
    architecture_for,
    hf_weights,
    model_shape,
    n_kv_heads,
)
from arithinterp.models.site import Site

_QKV = ("q", "k", "v")

Remote = bool | Literal["local"]
"""``False``: run here; ``True``: run on NDIF; ``"local"``: serialize the request
as for NDIF but run it here (nnsight's dry run of the remote path)."""


class NNsightBackend(Backend):
    """A model loaded through ``nnsight.TransformersModel``."""

    name = "nnsight"

    def __init__(
        self,
        lm: Any,
        config: Any,
        *,
        device: torch.device,
        dtype: torch.dtype,
        remote: Remote = False,
    ):
        self.lm = lm
        self.config = config
        self.arch: HFArchitecture = architecture_for(config)
        self.shape = model_shape(config, self.arch)
        self.n_kv_heads = n_kv_heads(config)
        self.tokenizer = lm.tokenizer
        self.device = device
        self.dtype = dtype
        self.remote = remote
        self._hf: torch.nn.Module = lm._module  # the wrapped HF model
        self._hf.eval()
        self._attention_calls: dict[int, str] = {}
        self._embed_path = _module_path(self._hf, self._hf.get_input_embeddings())
        self._unembed_path = _module_path(self._hf, self._hf.get_output_embeddings())

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        remote: Remote = False,
        device_map: str | dict[str, Any] | None = None,
    ) -> NNsightBackend:
        """Load an HF directory or hub name (``remote=True``: run it on NDIF, see module doc).
        ``device_map`` (e.g. ``"auto"``) splits the model across devices, in place of ``device``."""
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(path)
        except Exception as err:  # transformers raises OSError, ValueError, ...
            raise ModelLoadError(
                f"nnsight backend could not read a config for {path!r}: {type(err).__name__}: {err}"
            ) from err
        architecture_for(config)  # unsupported families fail before any weights load

        from nnsight import TransformersModel

        load: dict[str, Any] = {"attn_implementation": "eager", "dtype": dtype}
        if remote is not True:
            placement = device_map if device_map is not None else str(device)
            load.update(dispatch=True, device_map=placement, use_safetensors=True)
        try:
            lm = TransformersModel(path, task="text-generation", **load)
        except Exception as err:  # nnsight/transformers raise many kinds; all mean "cannot load"
            raise ModelLoadError(
                f"nnsight could not load {path!r}: {type(err).__name__}: {err}"
            ) from err
        if device_map is not None and remote is not True:  # tokens go where the embedding lives
            device = lm._module.get_input_embeddings().weight.device
        backend = cls(lm, config, device=torch.device(device), dtype=dtype, remote=remote)
        limit_tokenizer_context(backend.tokenizer, backend.shape.n_ctx)
        return backend

    def module(self) -> torch.nn.Module:
        return self._hf

    def hf_model(self) -> torch.nn.Module | None:
        return None if self.remote else self._hf

    def weights(self) -> Weights:
        self._need_local_weights("weights()")
        return hf_weights(self._hf, self.arch, self.shape)

    def final_norm(self, resid: torch.Tensor) -> torch.Tensor:
        self._need_local_weights("final_norm()")
        # Outside a trace nnsight's module wrappers are inert: a plain call.
        return self._hf.get_submodule(self.arch.final_norm)(resid)

    def _need_local_weights(self, what: str) -> None:
        if self.remote is True:
            raise ModelLoadError(
                f"{what} needs the weights, and a remote=True model holds none locally (they "
                "live on NDIF); load the model without remote=True for weight-based methods"
            )

    # -- running ---------------------------------------------------------
    def run(
        self, tokens: torch.Tensor, hooks: Mapping[Site, HookFn], *, grad: bool = False
    ) -> torch.Tensor:
        visits = self._plan(hooks)
        context = contextlib.nullcontext() if grad else torch.no_grad()
        with context:
            return self._trace(tokens.to(self.device), visits)

    def run_collect(
        self,
        tokens: torch.Tensor,
        hooks: Mapping[Site, HookFn],
        *,
        grad: bool = False,
        keep: dict,
        after: Callable[[torch.Tensor, dict], Any] | None = None,
    ) -> tuple[torch.Tensor, Any]:
        if not self.remote:
            return super().run_collect(tokens, hooks, grad=grad, keep=keep, after=after)
        # Remotely the hooks and ``after`` run on a copy of this request: what they store
        # into ``keep`` only comes back as a saved value of the trace.
        visits = self._plan(hooks)
        context = contextlib.nullcontext() if grad else torch.no_grad()
        with context:
            logits, kept, extra = self._remote_trace(tokens.to(self.device), visits, keep, after)
        if kept is not keep:
            keep.update(kept)
        return logits, extra

    def _trace(self, tokens: torch.Tensor, visits: list[Callable[[], None]]) -> torch.Tensor:
        unembed = self._envoy(self._unembed_path)
        trace_kwargs = {"remote": self._ship()} if self.remote else {}
        with self.lm.trace(tokens, **trace_kwargs):
            for visit in visits:
                visit()
            logits = unembed.output.save()
        return logits

    def _remote_trace(self, tokens: torch.Tensor, visits: list[Callable[[], None]], keep: dict,
                      after: Callable[[torch.Tensor, dict], Any] | None) -> tuple[torch.Tensor, dict, Any]:
        """One remote trace that sends back the logits, what the hooks kept and ``after``'s value.

        Kept in its own frame: nnsight writes the saved values back into the frame of the
        ``with`` block, which must not be the caller's (its ``keep`` is the caller's dict).
        """
        import nnsight

        unembed = self._envoy(self._unembed_path)
        with self.lm.trace(tokens, remote=self._ship()):
            for visit in visits:
                visit()
            logits = unembed.output.save()
            extra = nnsight.save(after(logits, keep) if after is not None else None)
            kept = nnsight.save(keep)
        return logits, kept, extra

    def _ship(self) -> bool | str:
        """The ``remote=`` of a trace; arithinterp is not installed on NDIF, so its hooks,
        sites and metrics travel by value (nnsight's ``register``)."""
        import nnsight

        nnsight.register("arithinterp")
        return self.remote

    def _plan(self, hooks: Mapping[Site, HookFn]) -> list[Callable[[], None]]:
        """One visit per touched layer (plus embed / final norm), in execution order.

        Everything that can fail on the site alone fails here, before the forward pass.
        """
        per_layer: dict[int, dict[str, HookFn]] = defaultdict(dict)
        embed = final = None
        for site, fn in hooks.items():
            if site.kind == "embed":
                embed = fn
            elif site.kind == "final_resid":
                final = fn
            else:
                assert site.layer is not None
                per_layer[site.layer][site.kind] = fn
        for layer, fns in per_layer.items():
            if "resid_mid" in fns and self._parallel_residual():
                raise SiteError(
                    f"{Site('resid_mid', layer).label}: this {self.arch.family} model uses a parallel "
                    "residual (attention and MLP both read resid_pre, and resid_post = "
                    "resid_pre + attn_out + mlp_out), so there is no point between attention "
                    "and MLP; use resid_pre, attn_out, mlp_out or resid_post"
                )
            if "pattern" in fns:
                if getattr(self.config, "reorder_and_upcast_attn", False):
                    raise SiteError(
                        f"{Site('pattern', layer).label}: this GPT-2 config sets reorder_and_upcast_attn, "
                        "whose attention bypasses the function the nnsight backend patches; "
                        "use the transformer_lens backend for pattern sites"
                    )
                self._attention_call(layer)
        visits: list[Callable[[], None]] = []
        if embed is not None:
            visits.append(partial(_swap_output, self._envoy(self._embed_path), embed))
        visits.extend(partial(self._visit_layer, layer, per_layer[layer]) for layer in sorted(per_layer))
        if final is not None:
            visits.append(partial(_swap_output, self._envoy(self.arch.final_norm), final))
        return visits

    def _parallel_residual(self) -> bool:
        flag = self.arch.parallel_residual
        return bool(flag and getattr(self.config, flag, False))

    def _envoy(self, path: str) -> Any:
        return self.lm.get(path)

    def _visit_layer(self, layer: int, fns: dict[str, HookFn]) -> None:
        """Read / replace one layer's sites, strictly in execution order (runs inside a trace)."""
        a = self.arch
        block_path = f"{a.layers}.{layer}"
        block = self._envoy(block_path)

        def sub(path: str) -> Any:
            return self._envoy(f"{block_path}.{path}")

        pre = None
        if "resid_pre" in fns or "resid_mid" in fns:
            pre = _swap_input(block, fns.get("resid_pre"))
        if any(kind in fns for kind in _QKV):
            self._visit_qkv(sub, fns)
        if "pattern" in fns:
            call = getattr(sub(a.attn).source, self._attention_call(layer))
            _swap_input(_pattern_matmul(call.source, a), fns["pattern"])
        if "attn_head" in fns:
            _swap_input(sub(a.attn_proj), _split_heads(fns["attn_head"], self.shape.n_heads))
        if "attn_out" in fns or "resid_mid" in fns:
            _swap_output(sub(a.attn), _attn_out_fn(fns.get("attn_out"), fns.get("resid_mid"), pre))
        if "mlp_post" in fns:
            _swap_input(sub(a.mlp_proj), fns["mlp_post"])
        if "mlp_out" in fns:
            _swap_output(sub(a.mlp), fns["mlp_out"])
        if "resid_post" in fns:
            _swap_output(block, fns["resid_post"])

    def _visit_qkv(self, sub: Callable[[str], Any], fns: dict[str, HookFn]) -> None:
        n_heads = {"q": self.shape.n_heads, "k": self.n_kv_heads, "v": self.n_kv_heads}
        if self.arch.qkv_layout == "separate":
            for kind, path in zip(_QKV, self.arch.qkv):
                if kind in fns:
                    _swap_output(sub(path), _split_heads(fns[kind], n_heads[kind]))
            return
        proj = sub(self.arch.qkv[0])
        fused = proj.output
        parts = _split_fused_qkv(fused, self.arch.qkv_layout, self.shape.n_heads)
        changed = False
        for kind in _QKV:
            if kind in fns:
                new = fns[kind](parts[kind])
                if new is not None:
                    parts[kind], changed = new, True
        if changed:
            proj.output = _join_fused_qkv(parts, self.arch.qkv_layout)

    def _attention_call(self, layer: int) -> str:
        """The source-op name of the attention function call in this layer's attention forward.

        Asking for ``.source`` rewrites that attention module's forward for good
        (nnsight keeps it inert outside traces, at a few percent of its speed), so
        only layers whose pattern is asked for pay for it.
        """
        if layer not in self._attention_calls:
            source = self._envoy(f"{self.arch.layers}.{layer}.{self.arch.attn}").source
            calls = [
                name
                for name in source.names
                if name.startswith("attention_interface_")
                and "attention_interface(" in _source_line(source, name)
            ]
            if len(calls) != 1:
                raise SiteError(
                    f"{Site('pattern', layer).label}: the nnsight backend reaches the attention pattern "
                    f"through the attention_interface call of {self.arch.family} attention, "
                    f"and found {len(calls)} such calls in this transformers version; "
                    "use the transformer_lens backend for pattern sites"
                )
            self._attention_calls[layer] = calls[0]
        return self._attention_calls[layer]


def _module_path(root: torch.nn.Module, module: torch.nn.Module) -> str:
    for path, candidate in root.named_modules():
        if candidate is module:
            return path
    raise ModelLoadError(f"{type(root).__name__} does not contain its own embedding {module}")


# -- helpers run inside a trace --------------------------------------------
def _swap_input(envoy: Any, fn: HookFn | None) -> torch.Tensor:
    """Give ``fn`` the first input of a module/op, write back its replacement; return the value."""
    value = envoy.input
    if fn is not None:
        new = fn(value)
        if new is not None:
            envoy.input = new
            value = new
    return value


def _swap_output(envoy: Any, fn: HookFn) -> None:
    """Give ``fn`` a module's output (element 0 of a tuple output) and write back its replacement."""
    out = envoy.output
    is_tuple = isinstance(out, tuple)
    new = fn(out[0] if is_tuple else out)
    if new is not None:
        envoy.output = (new, *out[1:]) if is_tuple else new


def _attn_out_fn(
    attn_out: HookFn | None, resid_mid: HookFn | None, pre: torch.Tensor | None
) -> HookFn:
    """attn_out's hook, then resid_mid's on ``pre + attn_out``, written back through attn_out."""

    def hook(value: torch.Tensor) -> torch.Tensor | None:
        current, changed = value, False
        if attn_out is not None:
            new = attn_out(current)
            if new is not None:
                current, changed = new, True
        if resid_mid is not None:
            assert pre is not None
            new = resid_mid(pre + current)
            if new is not None:
                current, changed = new - pre, True
        return current if changed else None

    return hook


def _split_heads(fn: HookFn, n_heads: int) -> HookFn:
    """Adapt a hook on ``[batch, pos, head, d_head]`` to a flat ``[batch, pos, head * d_head]``."""

    def hook(flat: torch.Tensor) -> torch.Tensor | None:
        b, p, _ = flat.shape
        new = fn(flat.reshape(b, p, n_heads, -1))
        return None if new is None else new.reshape(b, p, -1)

    return hook


def _split_fused_qkv(fused: torch.Tensor, layout: str, n_heads: int) -> dict[str, torch.Tensor]:
    b, p, width = fused.shape
    if layout == "gpt2":  # [q | k | v], each [head, d_head]
        q, k, v = fused.split(width // 3, dim=-1)
        return {kind: x.reshape(b, p, n_heads, -1) for kind, x in zip(_QKV, (q, k, v))}
    # neox: [head, (q | k | v), d_head]
    q, k, v = fused.reshape(b, p, n_heads, -1).chunk(3, dim=-1)
    return {"q": q, "k": k, "v": v}


def _join_fused_qkv(parts: dict[str, torch.Tensor], layout: str) -> torch.Tensor:
    b, p = parts["q"].shape[:2]
    if layout == "gpt2":
        return torch.cat([parts[kind].reshape(b, p, -1) for kind in _QKV], dim=-1)
    return torch.cat([parts[kind] for kind in _QKV], dim=-1).reshape(b, p, -1)


def _source_line(source: Any, name: str) -> str:
    compiled = source.compiled
    return compiled.source.split("\n")[compiled.lines[name] - 1]


_MATMUL = re.compile(r"^torch_matmul_\d+$")


def _pattern_matmul(inner: Any, arch: HFArchitecture) -> Any:
    """The ``attention_weights @ value`` op inside an eager attention function."""
    matmuls = [name for name in inner.names if _MATMUL.match(name)]
    if not matmuls or "value" not in _source_line(inner, matmuls[-1]):
        raise SiteError(
            f"pattern: the {arch.family} attention function has no `torch.matmul(weights, value)` "
            "step for the nnsight backend to patch (is attention eager?); use the "
            "transformer_lens backend for pattern sites"
        )
    return getattr(inner, matmuls[-1])
