"""Sites: typed addresses of activations, independent of any backend.

A :class:`Site` names one activation of a transformer the way a researcher
thinks of it (``Site("attn_head", layer=3, head=1, pos=-1)``), never as a hook
string. Backends translate sites into their own hooks.

Activation shapes returned for a site (``batch`` first; ``pos`` is dropped
when the site fixes a position; ``head`` / ``neuron`` are dropped when fixed):

==============  ==================================  ==============================
kind            needs                               activation
==============  ==================================  ==============================
``embed``       --                                  ``[batch, pos, d_model]`` token embedding
``resid_pre``   layer                               ``[batch, pos, d_model]``
``resid_mid``   layer                               ``[batch, pos, d_model]`` after attention
``resid_post``  layer                               ``[batch, pos, d_model]``
``attn_out``    layer                               ``[batch, pos, d_model]``
``mlp_out``     layer                               ``[batch, pos, d_model]``
``attn_head``   layer, (head)                       ``[batch, pos, head, d_head]`` head output z
``q/k/v``       layer, (head)                       ``[batch, pos, head, d_head]``
``pattern``     layer, (head)                       ``[batch, head, q_pos, k_pos]``
``mlp_post``    layer, (neuron)                     ``[batch, pos, neuron]``
``final_resid`` --                                  ``[batch, pos, d_model]`` after the final norm
==============  ==================================  ==============================

``attn_head`` is the head's value-weighted output before the output
projection (TransformerLens' ``hook_z``); the head's contribution to the
residual stream is ``z @ W_O[head]``. For ``pattern`` the position selects
the query position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from arithinterp.errors import SiteError

SiteKind = Literal[
    "embed",
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "attn_head",
    "q",
    "k",
    "v",
    "pattern",
    "mlp_post",
    "final_resid",
]
SITE_KINDS: tuple[str, ...] = get_args(SiteKind)

LAYERLESS_KINDS = frozenset({"embed", "final_resid"})
HEAD_KINDS = frozenset({"attn_head", "q", "k", "v", "pattern"})
NEURON_KINDS = frozenset({"mlp_post"})


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a model that sites and methods need."""

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    act_fn: str = "gelu"
    normalization: str = "LN"
    n_kv_heads: int | None = None
    """Key/value heads under grouped-query attention (``None``: as many as query heads)."""

    def heads_of(self, kind: str) -> int:
        """How many heads a head kind has (``k`` / ``v`` have fewer under grouped-query attention)."""
        if kind in ("k", "v") and self.n_kv_heads is not None:
            return self.n_kv_heads
        return self.n_heads


@dataclass(frozen=True, order=True)
class Site:
    """One activation of a transformer.

    Args:
        kind: which activation (see the module table).
        layer: the block index, required for every kind but ``embed`` and ``final_resid``.
        head: one attention head, for head kinds; ``None`` keeps all heads.
        neuron: one MLP neuron, for ``mlp_post``; ``None`` keeps all neurons.
        pos: one token position (negative counts from the end); ``None`` keeps all.
    """

    kind: str
    layer: int | None = None
    head: int | None = None
    neuron: int | None = None
    pos: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in SITE_KINDS:
            raise SiteError(
                f"unknown site kind {self.kind!r}; valid kinds are: {', '.join(SITE_KINDS)}"
            )
        if self.kind in LAYERLESS_KINDS:
            if self.layer is not None:
                raise SiteError(f"site kind {self.kind!r} takes no layer (got layer={self.layer})")
        elif self.layer is None:
            raise SiteError(f"site kind {self.kind!r} needs a layer, e.g. Site({self.kind!r}, layer=0)")
        if self.head is not None and self.kind not in HEAD_KINDS:
            raise SiteError(
                f"site kind {self.kind!r} takes no head; head kinds are {sorted(HEAD_KINDS)}"
            )
        if self.neuron is not None and self.kind not in NEURON_KINDS:
            raise SiteError(
                f"site kind {self.kind!r} takes no neuron; neuron kinds are {sorted(NEURON_KINDS)}"
            )

    @property
    def label(self) -> str:
        """A short human-readable name, e.g. ``L3H1@-1`` or ``mlp_post L0N17``."""
        parts = [self.kind]
        if self.layer is not None:
            where = f"L{self.layer}"
            if self.head is not None:
                where += f"H{self.head}"
            if self.neuron is not None:
                where += f"N{self.neuron}"
            parts.append(where)
        if self.pos is not None:
            parts.append(f"@{self.pos}")
        return " ".join(parts)

    def at(self, pos: int | None) -> Site:
        """The same site at another position (``None``: every position)."""
        return Site(self.kind, self.layer, self.head, self.neuron, pos)

    def whole(self) -> Site:
        """The site with head, neuron and position selections removed: what a backend hooks."""
        return Site(self.kind, self.layer)

    def validate(self, shape: ModelShape, seq_len: int | None = None) -> Site:
        """Raise :class:`SiteError` if the model lacks this site; return the site."""
        if self.layer is not None and not 0 <= self.layer < shape.n_layers:
            raise SiteError(
                f"{self.label}: layer {self.layer} is out of range; the model has layers "
                f"0..{shape.n_layers - 1}"
            )
        n_heads = shape.heads_of(self.kind)
        if self.head is not None and not 0 <= self.head < n_heads:
            which = "key/value heads" if n_heads != shape.n_heads else "heads"
            raise SiteError(
                f"{self.label}: head {self.head} is out of range; the model has {which} "
                f"0..{n_heads - 1}"
            )
        if self.neuron is not None and not 0 <= self.neuron < shape.d_mlp:
            raise SiteError(
                f"{self.label}: neuron {self.neuron} is out of range; the model has neurons "
                f"0..{shape.d_mlp - 1}"
            )
        if self.pos is not None and seq_len is not None and not -seq_len <= self.pos < seq_len:
            raise SiteError(
                f"{self.label}: position {self.pos} is out of range for prompts of {seq_len} "
                f"tokens; valid positions are {-seq_len}..{seq_len - 1}"
            )
        return self


def all_sites(
    shape: ModelShape,
    kind: str,
    *,
    per_head: bool = False,
    per_neuron: bool = False,
    positions: int | None = None,
) -> list[Site]:
    """Every site of one kind in a model, in (layer, head|neuron, pos) order.

    Args:
        shape: the model's shape.
        kind: a site kind.
        per_head: one site per head for head kinds.
        per_neuron: one site per neuron for ``mlp_post``.
        positions: if given, one site per position ``0..positions-1``.
    """
    Site(kind, None if kind in LAYERLESS_KINDS else 0)  # validates the kind
    layers: list[int | None] = [None] if kind in LAYERLESS_KINDS else list(range(shape.n_layers))
    pos_list: list[int | None] = [None] if positions is None else list(range(positions))
    heads: list[int | None] = (
        list(range(shape.heads_of(kind))) if per_head and kind in HEAD_KINDS else [None]
    )
    neurons: list[int | None] = (
        list(range(shape.d_mlp)) if per_neuron and kind in NEURON_KINDS else [None]
    )
    return [
        Site(kind, layer, head, neuron, pos)
        for layer in layers
        for head in heads
        for neuron in neurons
        for pos in pos_list
    ]

