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

Every site has one label (:attr:`Site.label`), read back by
:meth:`Site.from_label`; these are the only builder and parser of component
labels. The forms, one per kind: ``embed``, ``L<l> pre``, ``L<l> mid``,
``L<l> post``, ``ATTN<l>`` (attn_out), ``MLP<l>`` (mlp_out), ``L<l>H<h>``
(attn_head), ``L<l>H<h>.q`` / ``.k`` / ``.v`` / ``.pattern``, ``L<l>N<n>``
(mlp_post), ``final`` (final_resid); ``*`` for all heads / neurons of a layer
(``L3H*``) and ``@<pos>`` at the end for a fixed position (``L3H1@-1``).

Facts about each kind live in one :class:`SiteKindInfo` per kind
(:data:`SITE_KIND_INFO`); every per-kind table is derived from it.
"""

from __future__ import annotations

import re
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

Stage = Literal["pre", "mid", "post", "final"]

_RESID = ("batch", "pos", "d_model")
_HEADS = ("batch", "pos", "head", "d_head")


@dataclass(frozen=True)
class SiteKindInfo:
    """Everything the library knows about one site kind, in one place.

    Every per-kind table elsewhere (layerless / head / neuron kinds, the
    execution order backends sort hooks by, the patching engine's stages,
    which kinds path patching and circuits accept) is derived from
    :data:`SITE_KIND_INFO`. A new site kind is one entry here plus its hook in
    each backend.

    Attributes:
        kind: the kind's name.
        label: the label template (see :attr:`Site.label`); ``{layer}``,
            ``{head}`` and ``{neuron}`` are filled in, ``*`` for an unselected head
            or neuron.
        layered: whether the kind needs a layer (all but ``embed`` and ``final_resid``).
        unit: what a site of this kind can select inside a layer: ``"head"``,
            ``"neuron"`` or ``None``.
        layout: the dims of the whole site's activation, ``batch`` first.
        order: when the kind is computed inside its block (backends that visit
            activations in execution order sort by ``(layer, order)``);
            ``embed`` comes before every block, ``final_resid`` after.
        stage: the residual stream of its block that a patch of this kind changes
            first: ``pre`` (``resid_pre``), ``mid`` (``resid_mid``), ``post``
            (``resid_post``) or ``final`` (after the final norm).
        additive: a patch at one position changes the residual stream by a delta
            computable on its own (``False`` for q/k/v/pattern, which act through
            attention).
        path_point: where a path-patching sender writes, in steps of the forward
            pass (block ``L`` spans ``4L+1 .. 4L+5``; ``None``: not a sender).
        receiver: whether path patching can route a sender's effect into it.
        circuit: whether it can be a member of a circuit (ablation).
    """

    kind: str
    label: str
    layered: bool = True
    unit: Literal["head", "neuron"] | None = None
    layout: tuple[str, ...] = _RESID
    order: int = 0
    stage: Stage = "pre"
    additive: bool = True
    path_point: int | None = None
    receiver: bool = False
    circuit: bool = False


def _info(kind: str, label: str, **kw) -> tuple[str, SiteKindInfo]:
    return kind, SiteKindInfo(kind, label, **kw)


#: The one description of every site kind, in :data:`SITE_KINDS` order.
SITE_KIND_INFO: dict[str, SiteKindInfo] = dict([
    _info("embed", "embed", layered=False, order=-1, stage="pre", path_point=0),
    _info("resid_pre", "L{layer} pre", order=0, stage="pre", path_point=1, receiver=True),
    _info("resid_mid", "L{layer} mid", order=7, stage="mid", path_point=3, receiver=True),
    _info("resid_post", "L{layer} post", order=10, stage="post", path_point=5, receiver=True),
    _info("attn_out", "ATTN{layer}", order=6, stage="mid", path_point=2, circuit=True),
    _info("mlp_out", "MLP{layer}", order=9, stage="post", path_point=4, circuit=True),
    _info("attn_head", "L{layer}H{head}", unit="head", layout=_HEADS, order=5, stage="mid",
          path_point=2, circuit=True),
    _info("q", "L{layer}H{head}.q", unit="head", layout=_HEADS, order=1, stage="mid",
          additive=False, receiver=True),
    _info("k", "L{layer}H{head}.k", unit="head", layout=_HEADS, order=2, stage="mid",
          additive=False, receiver=True),
    _info("v", "L{layer}H{head}.v", unit="head", layout=_HEADS, order=3, stage="mid",
          additive=False, receiver=True),
    _info("pattern", "L{layer}H{head}.pattern", unit="head",
          layout=("batch", "head", "q_pos", "k_pos"), order=4, stage="mid", additive=False),
    _info("mlp_post", "L{layer}N{neuron}", unit="neuron", layout=("batch", "pos", "neuron"),
          order=8, stage="post", receiver=True, circuit=True),
    _info("final_resid", "final", layered=False, order=1 << 20, stage="final", receiver=True),
])  # fmt: skip
assert tuple(SITE_KIND_INFO) == SITE_KINDS

LAYERLESS_KINDS = frozenset(k for k, i in SITE_KIND_INFO.items() if not i.layered)
HEAD_KINDS = frozenset(k for k, i in SITE_KIND_INFO.items() if i.unit == "head")
NEURON_KINDS = frozenset(k for k, i in SITE_KIND_INFO.items() if i.unit == "neuron")

_NUM = r"0|[1-9][0-9]*"
_POS_SUFFIX = r"(?:@(?P<pos>-?(?:" + _NUM + r")))?"


def _label_pattern(template: str) -> re.Pattern[str]:
    fields = {"layer": f"(?P<layer>{_NUM})", "head": rf"(?P<head>{_NUM}|\*)",
              "neuron": rf"(?P<neuron>{_NUM}|\*)"}
    parts = re.split(r"(\{\w+\})", template)
    body = "".join(fields[p[1:-1]] if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(body + _POS_SUFFIX)


_LABEL_PATTERNS = {kind: _label_pattern(info.label) for kind, info in SITE_KIND_INFO.items()}
LABEL_FORMS: dict[str, str] = {
    kind: info.label.replace("{layer}", "<layer>").replace("{head}", "<head>").replace("{neuron}", "<neuron>")
    for kind, info in SITE_KIND_INFO.items()
}
"""Each kind's label form (``L<layer>H<head>``); every label may end in ``@<pos>``."""


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
        if not isinstance(self.kind, str):
            raise SiteError(f"Site kind must be a str, got {self.kind!r}; valid kinds are: {', '.join(SITE_KINDS)}")
        for name in ("layer", "head", "neuron", "pos"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) and not _is_np_int(value):
                raise SiteError(f"Site.{name} must be an int or None, got {value!r} ({type(value).__name__})")
            object.__setattr__(self, name, int(value))  # numpy ints hash and print as ints
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
        """The site's one name, used in every result and report.

        ``L3H1`` (a head), ``MLP0`` (a whole MLP's output), ``ATTN0`` (an
        attention block's output), ``L0N17`` (a neuron), ``L2 pre`` / ``L2 mid`` /
        ``L2 post`` (the residual stream), ``embed``, ``final``; q/k/v/pattern
        are a head's label with ``.q`` / ``.k`` / ``.v`` / ``.pattern``; ``*``
        stands for every head or neuron of the layer; a fixed position ends the
        label in ``@<pos>`` (``L3H1@-1``). :meth:`from_label` reads it back.
        """
        text = SITE_KIND_INFO[self.kind].label.format(
            layer=self.layer,
            head="*" if self.head is None else self.head,
            neuron="*" if self.neuron is None else self.neuron,
        )
        return text if self.pos is None else f"{text}@{self.pos}"

    @classmethod
    def from_label(cls, text: str) -> Site:
        """The site a label names: ``Site.from_label(site.label) == site`` for every site.

        Raises :class:`SiteError` listing the valid forms when ``text`` is not a label.
        """
        if isinstance(text, str):
            for kind, pattern in _LABEL_PATTERNS.items():
                match = pattern.fullmatch(text)
                if match is None:
                    continue
                found = match.groupdict()
                num = {k: None if v in (None, "*") else int(v) for k, v in found.items()}
                return cls(kind, num.get("layer"), num.get("head"), num.get("neuron"), num.get("pos"))
        raise SiteError(
            f"{text!r} is not a site label; valid forms are {', '.join(LABEL_FORMS.values())} "
            "(<head> / <neuron> may be '*' for all), each optionally ending in '@<pos>'"
        )

    @property
    def info(self) -> SiteKindInfo:
        """What the library knows about this site's kind."""
        return SITE_KIND_INFO[self.kind]

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


def _is_np_int(value: object) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "dtype") and value.dtype.kind in "iu"


#: TransformerLens hook-name suffixes and the site kind each one is.
_TL_SUFFIX_KINDS = {
    "hook_resid_pre": "resid_pre", "hook_resid_mid": "resid_mid", "hook_resid_post": "resid_post",
    "hook_attn_out": "attn_out", "hook_mlp_out": "mlp_out", "attn.hook_z": "attn_head",
    "attn.hook_q": "q", "attn.hook_k": "k", "attn.hook_v": "v", "attn.hook_pattern": "pattern",
    "mlp.hook_post": "mlp_post",
}
_TL_HOOK = re.compile(r"blocks\.(?P<layer>\d+)\.(?P<suffix>[\w.]+)")


def _site_for_hook_name(text: str) -> Site | None:
    """The site a TransformerLens hook name (``blocks.0.attn.hook_z``) addresses, if any."""
    if text in ("hook_embed", "embed.hook_out"):
        return Site("embed")
    if text.startswith("ln_final."):
        return Site("final_resid")
    match = _TL_HOOK.fullmatch(text)
    kind = _TL_SUFFIX_KINDS.get(match["suffix"]) if match else None
    return Site(kind, int(match["layer"])) if kind and match else None


def as_site(value: object) -> Site:
    """``value`` if it is a :class:`Site`, the site a label string names (``"L0H1"``), or a
    :class:`SiteError` that shows the Site to write (hook names are not accepted: a site is
    backend-independent)."""
    if isinstance(value, Site):
        return value
    if isinstance(value, str):
        hooked = _site_for_hook_name(value)
        if hooked is not None:
            layer = "" if hooked.layer is None else f", layer={hooked.layer}"
            raise SiteError(
                f"{value!r} is a TransformerLens hook name; arithinterp addresses activations by "
                f"Site: write Site({hooked.kind!r}{layer}) (label {hooked.label!r}), adding "
                "head=/neuron=/pos= to select part of it"
            )
        return Site.from_label(value)
    raise SiteError(
        f"expected a Site (e.g. Site('attn_head', layer=0, head=1)) or a site label, got "
        f"{type(value).__name__} {value!r:.60}"
    )


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



def depth_site(layer: int, n_layers: int) -> Site:
    """The residual-stream site at ``layer`` of a residual-depth axis (lens, probes).

    On such an axis ``layer=k`` is the stream entering block ``k``
    (``resid_pre``, label ``Lk pre``) and ``layer=n_layers`` the stream after
    the last block (``resid_post``, label ``L<n-1> post``).
    """
    if not 0 <= layer <= n_layers:
        raise SiteError(f"depth {layer} is out of range; depths are 0..{n_layers}")
    return Site("resid_post", n_layers - 1) if layer == n_layers else Site("resid_pre", layer)


def site_depth(site: Site, n_layers: int) -> int:
    """The ``layer`` of a residual-depth axis at which ``site`` is read.

    A site of block ``k`` is at ``k`` (``resid_mid`` too: it is inside the
    block), ``resid_post`` of block ``k`` is the stream entering ``k + 1``;
    ``embed`` is 0 and ``final_resid`` is ``n_layers``.
    """
    if site.kind == "embed":
        return 0
    if site.kind == "final_resid":
        return n_layers
    assert site.layer is not None
    return site.layer + (1 if site.kind == "resid_post" else 0)
