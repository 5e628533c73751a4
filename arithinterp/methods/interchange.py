"""Interchange interventions on a high-level causal model, scored by IIA.

For a variable ``V`` of a :class:`~arithinterp.tasks.causal.CausalModel` and a site ``h``
(a :class:`Site` with a fixed position) with a subspace spanned by the orthonormal rows of
``U`` (``[k, width]`` over the site's flattened activation), the interchange intervention
runs the base prompt with

    h' = h_base + Uᵀ U (h_source − h_base)

that is, the base's projection onto the subspace replaced by the source's (Geiger et al.;
``shared/METHODS.md`` §17). It succeeds when the model's greedy answer equals the causal
model's counterfactual answer (the base input with ``V`` set to its value on the source);
IIA is the fraction of successes over pairs that change ``V``.

Answers are scored teacher-forced: the base prompt is followed by the counterfactual answer
and every answer position's argmax must be the counterfactual's token, which holds exactly
when greedy decoding writes the counterfactual answer. The source runs on its own prompt and
answer. ``pairs.clean`` are the bases and ``pairs.corrupt`` the sources
(:meth:`CausalModel.make_pairs`).

Subspaces: ``None`` (the full vector, ``U = I``), a basis (``[k, width]`` array or tensor;
rows are orthonormalised) or a :class:`Featurizer` (what :func:`~arithinterp.methods.das`
learns).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
import xarray as xr

from arithinterp.errors import MethodError
from arithinterp.methods._common import make_meta
from arithinterp.models import Model, Site
from arithinterp.models.site import HEAD_KINDS, ModelShape
from arithinterp.results import Result, ResultMeta
from arithinterp.results.base import resultclass
from arithinterp.tasks import PromptPairs, tokenize
from arithinterp.tasks.causal import CausalModel

__all__ = [
    "Featurizer",
    "InterchangeBatch",
    "InterchangeResult",
    "interchange_batch",
    "interchange_intervention",
    "site_width",
]


@dataclass(frozen=True)
class Featurizer:
    """An orthonormal basis ``[k, width]`` of a site's flattened activation: the variable's subspace.

    ``features(h)`` are the coordinates ``U h``; ``inverse(f)`` maps them back, ``Uᵀ f`` (the
    featurizer / inverse featurizer pair of MIB's causal-variable track, restricted to the
    variable's ``k`` dims).
    """

    basis: torch.Tensor

    @property
    def dim(self) -> int:
        return int(self.basis.shape[0])

    @property
    def width(self) -> int:
        return int(self.basis.shape[1])

    def features(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.basis.T.to(h.dtype)

    def inverse(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.basis.to(f.dtype)

    def swap(self, base: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """The base with its subspace coordinates replaced by the source's."""
        return base + self.inverse(self.features(source - base))

    @classmethod
    def of(cls, basis: Any, width: int) -> Featurizer:
        """A featurizer from a ``[k, width]`` array or tensor (orthonormalised), or one as is."""
        if isinstance(basis, Featurizer):
            u = basis.basis
        else:
            u = torch.as_tensor(np.asarray(basis) if not isinstance(basis, torch.Tensor) else basis)
            u = u.detach().to(torch.float64)
            if u.ndim == 1:
                u = u[None]
            if u.ndim != 2 or u.shape[0] < 1:
                raise MethodError(f"a subspace basis must be [k, width], got shape {tuple(u.shape)}")
            if u.shape[1] == width and u.shape[0] <= width:
                q, _ = torch.linalg.qr(u.T)
                u = q.T.contiguous()
        if u.shape[1] != width:
            raise MethodError(f"the subspace basis has width {u.shape[1]} but the site's activation has {width}")
        if u.shape[0] > width:
            raise MethodError(f"a subspace of dimension {u.shape[0]} exceeds the site's width {width}")
        return cls(u.detach().to(torch.float32))


def site_width(shape: ModelShape, site: Site) -> int:
    """The width of a site's activation at one position, flattened (heads times ``d_head``...)."""
    if site.kind == "pattern":
        raise MethodError(f"{site.label}: interchange interventions act on activations, not attention patterns; "
                          "use attn_head, resid_*, attn_out, mlp_out, mlp_post, q, k or v")
    if site.kind in HEAD_KINDS:
        return shape.d_head * (1 if site.head is not None else shape.heads_of(site.kind))
    if site.kind == "mlp_post":
        return 1 if site.neuron is not None else shape.d_mlp
    return shape.d_model


def check_site(model: Model, site: Site) -> int:
    """``MethodError`` unless ``site`` is a site of ``model`` at a fixed position; its width."""
    if not isinstance(site, Site):
        raise MethodError(f"site must be a Site (e.g. Site('resid_pre', layer=1, pos=-1)), got {site!r}")
    if site.pos is None:
        raise MethodError(f"{site.label}: an interchange intervention needs a position, e.g. {site.at(-1).label}")
    model.validate([site])
    return site_width(model.shape, site)


@dataclass(frozen=True)
class InterchangeBatch:
    """Tokenized (base, source) pairs of one variable.

    ``base``: base prompts followed by the counterfactual answer (teacher-forced), ``[n, pos]``;
    ``source``: source prompts and their own answers; ``target``: counterfactual answer tokens
    ``[n, answer]``; ``base_answer``: the base's own answer tokens; ``positions``: the positions
    whose logits predict each answer token.
    """

    base: torch.Tensor
    source: torch.Tensor
    target: torch.Tensor
    base_answer: torch.Tensor
    positions: torch.Tensor
    str_tokens: tuple[str, ...]
    dataset_hash: str

    def __len__(self) -> int:
        return int(self.base.shape[0])

    def take(self, idx: Any) -> InterchangeBatch:
        return InterchangeBatch(self.base[idx], self.source[idx], self.target[idx], self.base_answer[idx],
                                self.positions, self.str_tokens, self.dataset_hash)


def check_pairs(causal_model: CausalModel, pairs: PromptPairs, variable: str) -> str:
    """The variable's name; ``MethodError`` unless it is defined and every pair changes it."""
    name = causal_model.resolve(variable)
    if not isinstance(pairs, PromptPairs):
        raise MethodError(f"pairs must be PromptPairs (causal_model.make_pairs), got {type(pairs).__name__}")
    changed = causal_model.changes(pairs, name)
    if not changed.all():
        raise MethodError(f"{int((~changed).sum())} of {len(pairs)} pairs do not change {name!r}; IIA is defined "
                          f"on pairs that change the variable: use causal_model.make_pairs(prompts, {name!r})")
    return name


def interchange_batch(model: Model, causal_model: CausalModel, pairs: PromptPairs, variable: str) -> InterchangeBatch:
    """Tokenize the pairs of ``variable`` for interventions (checks them first, see :func:`check_pairs`)."""
    name = check_pairs(causal_model, pairs, variable)
    cf = tokenize(causal_model.counterfactual_prompts(pairs, name), model.tokenizer)
    src = tokenize(pairs.corrupt, model.tokenizer)
    own = tokenize(pairs.clean, model.tokenizer)
    if cf.tokens.shape != src.tokens.shape or own.tokens.shape != cf.tokens.shape:
        raise MethodError(f"base, counterfactual and source sequences tokenize to {tuple(own.tokens.shape)}, "
                          f"{tuple(cf.tokens.shape)} and {tuple(src.tokens.shape)}; interventions need equal "
                          "lengths (a fixed-width format)")
    keep = cf.prompt_len if cf.answer_len == 1 else cf.tokens.shape[1] - 1
    return InterchangeBatch(
        base=cf.tokens[:, :keep].to(model.device), source=src.tokens[:, :keep].to(model.device),
        target=cf.answer_tokens.to(model.device), base_answer=own.answer_tokens.to(model.device),
        positions=torch.arange(cf.prompt_len - 1, cf.prompt_len - 1 + cf.answer_len),
        str_tokens=tuple(cf.str_tokens[:keep]), dataset_hash=pairs.clean.hash,
    )


def source_activations(model: Model, batch: InterchangeBatch, site: Site, batch_size: int = 512) -> torch.Tensor:
    """The site's activation on every source run, flattened: ``[n, width]``."""
    parts = []
    for start in range(0, len(batch), batch_size):
        _, cache = model.run_with_cache(batch.source[start:start + batch_size], [site])
        parts.append(cache[site].reshape(cache[site].shape[0], -1).float())
    return torch.cat(parts)


SwapFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def patched_logits(model: Model, batch: InterchangeBatch, site: Site, source: torch.Tensor, swap: SwapFn, *,
                   grad: bool = False) -> torch.Tensor:
    """Answer logits ``[n, answer, vocab]`` of the base runs with ``swap(base, source)`` at ``site``."""
    def patch(current: torch.Tensor) -> torch.Tensor:
        flat = current.reshape(current.shape[0], -1)
        return swap(flat, source.to(flat.dtype)).reshape(current.shape).to(current.dtype)

    logits = model.logits(batch.base, {site: patch}, grad=grad)
    return logits[:, batch.positions]


def successes(model: Model, batch: InterchangeBatch, site: Site, source: torch.Tensor, swap: SwapFn, *,
              batch_size: int = 256) -> np.ndarray:
    """Per pair: whether the intervened run writes the counterfactual answer."""
    out = []
    for start in range(0, len(batch), batch_size):
        part = batch.take(slice(start, start + batch_size))
        logits = patched_logits(model, part, site, source[start:start + batch_size], swap)
        out.append((logits.argmax(-1) == part.target).all(-1).cpu().numpy())
    return np.concatenate(out)


@resultclass
class InterchangeResult(Result):
    """Per-pair success of an interchange intervention; ``iia`` is their mean.

    ``values``: dims ``(prompt,)``, 1.0 where the intervened base run wrote the causal model's
    counterfactual answer, with coordinates ``base`` and ``source`` (the prompts). Fields:
    ``variable``, ``site`` (label), ``subspace`` (``"full"``, ``"basis"``, ``"das"``...),
    ``dim`` (the subspace's dimension), ``iia``.
    """

    metric_name = "success"
    variable: str = ""
    site: str = ""
    subspace: str = "full"
    dim: int = 0
    iia: float = float("nan")

    def plot(self) -> go.Figure:
        frame = self.to_frame()
        fig = go.Figure(go.Bar(x=["fail", "success"], y=[int((frame[self.metric] == 0).sum()),
                                                          int((frame[self.metric] == 1).sum())]))
        return fig.update_layout(title=f"IIA {self.iia:.3f}: {self.variable} at {self.site} ({self.subspace}, "
                                       f"dim {self.dim})", yaxis_title="pairs")

    @classmethod
    def example(cls) -> InterchangeResult:
        values = xr.DataArray(np.array([1.0, 0.0, 1.0]), dims=("prompt",),
                              coords={"prompt": np.arange(3), "base": ("prompt", ["1+2=", "3+4=", "5+6="]),
                                      "source": ("prompt", ["7+2=", "1+4=", "2+6="])})
        meta = ResultMeta(method="interchange_intervention", model="synthetic", seed=0)
        return cls(values=values, meta=meta, variable="a_digit_0", site="L0H0@3", subspace="full", dim=32,
                   iia=2 / 3)


def resolve_subspace(subspace: Any, width: int) -> tuple[Featurizer | None, str]:
    """``(featurizer or None for the full vector, its kind)``; ``MethodError`` for a bad one."""
    if subspace is None or (isinstance(subspace, str) and subspace == "full"):
        return None, "full"
    if isinstance(subspace, str):
        raise MethodError(f"subspace must be None / 'full', a [k, width] basis or a Featurizer, got {subspace!r}")
    learned = getattr(subspace, "featurizer", None)
    if learned is not None:  # a DASResult
        return Featurizer.of(learned, width), "das"
    return Featurizer.of(subspace, width), "featurizer" if isinstance(subspace, Featurizer) else "basis"


def full_swap(base: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    return source


def interchange_intervention(
    model: Model,
    causal_model: CausalModel,
    pairs: PromptPairs,
    *,
    variable: str,
    site: Site,
    subspace: Any = None,
    batch_size: int = 256,
) -> InterchangeResult:
    """IIA of ``variable`` at ``site`` with ``subspace`` (see the module docstring).

    Args:
        model: the model.
        causal_model: the task's causal model (:func:`arithinterp.tasks.causal_model`).
        pairs: ``clean`` = base prompts, ``corrupt`` = sources; every pair must change the
            variable (:meth:`CausalModel.make_pairs` draws such pairs).
        variable: a variable of the causal model (MIB's names are aliases for addition).
        site: a :class:`Site` with a position (``Site("resid_post", 0, pos=-1)``).
        subspace: ``None`` (the full vector), a ``[k, width]`` basis, a :class:`Featurizer`
            or a :class:`~arithinterp.methods.das.DASResult`.

    Raises:
        MethodError: an unknown variable, pairs that do not change it, a site without a
            position, a subspace wider than the site; all before any forward pass.
    """
    width = check_site(model, site)
    featurizer, kind = resolve_subspace(subspace, width)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise MethodError(f"batch_size must be a positive int, got {batch_size!r}")
    name = check_pairs(causal_model, pairs, variable)
    batch = interchange_batch(model, causal_model, pairs, name)
    source = source_activations(model, batch, site)
    swap = full_swap if featurizer is None else featurizer.swap
    ok = successes(model, batch, site, source, swap, batch_size=batch_size).astype(float)
    values = xr.DataArray(ok, dims=("prompt",), coords={
        "prompt": np.arange(len(ok)), "base": ("prompt", list(pairs.clean.prompts)),
        "source": ("prompt", list(pairs.corrupt.prompts))})
    dim = width if featurizer is None else featurizer.dim
    options = {"variable": name, "site": site.label, "subspace": kind, "dim": dim, "n_pairs": len(ok)}
    meta = make_meta("interchange_intervention", model, options=options, dataset_hash=batch.dataset_hash)
    return InterchangeResult(values=values, meta=meta, variable=name, site=site.label, subspace=kind, dim=dim,
                             iia=float(ok.mean()))


def random_basis(width: int, dim: int, seed: int) -> torch.Tensor:
    """A Haar-random orthonormal ``[dim, width]`` basis (the random-rotation control)."""
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(width, dim, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).T.float().contiguous()
