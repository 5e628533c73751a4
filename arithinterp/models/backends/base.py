"""The contract every backend implements.

A backend runs one model and lets the caller read or replace the activation
of whole sites (``Site(kind, layer)``, no head / neuron / position selection)
in canonical layout (see :mod:`arithinterp.models.site`). Selections, caching,
patch values and gradients are built on top of this one primitive by
:class:`arithinterp.models.Model`, so every backend behaves identically.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from arithinterp.models.site import SITE_KIND_INFO, ModelShape, Site

HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]
"""Receives a whole site's activation (canonical layout) and returns its
replacement, or ``None`` to leave it unchanged."""

def limit_tokenizer_context(tokenizer: object, n_ctx: int) -> None:
    """Lower a tokenizer the backend loaded itself to the model's context length, so that
    :func:`arithinterp.tasks.tokenize` refuses prompts the model cannot read (a tokenizer
    config may claim more positions than the model has)."""
    current = getattr(tokenizer, "model_max_length", None)
    if isinstance(current, int) and n_ctx > 0 and n_ctx < current:
        tokenizer.model_max_length = n_ctx  # type: ignore[attr-defined]


def execution_order(site: Site) -> tuple[int, int]:
    """A sort key that puts sites in the order a forward pass computes them.

    Backends that must visit activations in execution order (nnsight) sort by
    it; the order inside a block is :attr:`SiteKindInfo.order`.
    """
    info = SITE_KIND_INFO[site.kind]
    if not info.layered:
        return (-1 if info.stage == "pre" else 1 << 30, 0)
    assert site.layer is not None
    return (site.layer, info.order)


@dataclass(frozen=True)
class Weights:
    """The weights methods read directly, in TransformerLens layout.

    ``W_U``: ``[d_model, d_vocab]``; ``b_U``: ``[d_vocab]``; ``W_E``: ``[d_vocab, d_model]``;
    ``W_O``: ``[layer, head, d_head, d_model]``; ``W_out``: ``[layer, d_mlp, d_model]``;
    ``W_in``: ``[layer, d_model, d_mlp]``.
    """

    W_U: torch.Tensor
    b_U: torch.Tensor
    W_E: torch.Tensor
    W_O: torch.Tensor
    W_in: torch.Tensor
    W_out: torch.Tensor


class Backend(ABC):
    """One loaded model behind one interpretability library."""

    name: str
    shape: ModelShape
    tokenizer: object
    device: torch.device
    dtype: torch.dtype

    @abstractmethod
    def run(
        self,
        tokens: torch.Tensor,
        hooks: Mapping[Site, HookFn],
        *,
        grad: bool = False,
    ) -> torch.Tensor:
        """Run ``tokens`` (``[batch, pos]``) calling each hook on its whole site.

        Returns the logits ``[batch, pos, d_vocab]``. With ``grad=False`` the
        pass runs under ``torch.no_grad()``.
        """

    def run_collect(
        self,
        tokens: torch.Tensor,
        hooks: Mapping[Site, HookFn],
        *,
        grad: bool = False,
        keep: dict,
        after: Callable[[torch.Tensor, dict], Any] | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """:meth:`run`, where the hooks store what they cache into ``keep``, then
        ``after(logits, keep)`` (a metric and its gradients) while the pass's graph exists.

        Returns the logits and what ``after`` returned. Here both run in this process; a
        backend whose forward runs elsewhere (nnsight on NDIF) runs ``after`` there and
        sends ``keep`` and its value back.
        """
        logits = self.run(tokens, hooks, grad=grad)
        return logits, (after(logits, keep) if after is not None else None)

    @abstractmethod
    def weights(self) -> Weights:
        """The model's weights in TransformerLens layout (views, not copies, where possible)."""

    @abstractmethod
    def final_norm(self, resid: torch.Tensor) -> torch.Tensor:
        """Apply the model's final normalisation to a residual-stream tensor ``[..., d_model]``."""

    def hf_model(self) -> torch.nn.Module | None:
        """The Hugging Face module being run, if there is one (fast engines read its weights)."""
        return None

    @abstractmethod
    def module(self) -> torch.nn.Module:
        """The underlying torch module (for ``.train()`` / ``.eval()`` and parameter access)."""
