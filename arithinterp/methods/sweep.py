"""The cells of a patching sweep and the literal way to patch them.

:func:`sweep_sites` lays out the sites of one kind in result order, with the
result's dims and coordinates; :func:`run_literal` patches each of them with
one full forward pass through the backend. The literal loop is the oracle the
fast engine (:mod:`arithinterp.methods.patching_engine`) is tested against and
falls back to; both :mod:`~arithinterp.methods.patching` and the engine import
it from here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from arithinterp.errors import MethodError, SiteError
from arithinterp.methods.metrics import MetricFn, PairBatch
from arithinterp.models import Model, Site
from arithinterp.models.site import HEAD_KINDS, LAYERLESS_KINDS, NEURON_KINDS, SITE_KINDS
from arithinterp.progress_bars import tqdm


def resolve_positions(positions: Sequence[int] | None, seq_len: int) -> list[int]:
    """Absolute positions of a sequence of ``seq_len`` tokens (default: all of them); a
    negative position counts from the end (``-1`` is the last). ``MethodError`` for a
    position outside the sequence or one named twice."""
    if positions is None:
        return list(range(seq_len))
    if isinstance(positions, (int, np.integer)):
        positions = [int(positions)]
    given = [int(p) for p in positions]
    bad = [p for p in given if not -seq_len <= p < seq_len]
    if bad or not given:
        raise MethodError(
            f"positions {given} name no position or fall outside the {seq_len} tokens of the "
            f"sequence: use 0..{seq_len - 1}, or -1..-{seq_len} counting from the end"
        )
    out = [p % seq_len for p in given]
    if len(set(out)) != len(out):
        raise MethodError(f"positions {given} name a position twice ({out} from the start)")
    return out


def sweep_sites(model: Model, kind: str, *, per_position: bool, seq_len: int,
                heads: bool = True, neurons: Sequence[int] | None = None,
                positions: Sequence[int] | None = None) -> tuple[list[Site], dict]:
    """The sites of a sweep in (layer, head|neuron, pos) order, and the result coordinates.

    ``positions`` (with ``per_position``) restricts the sweep to those positions, negative
    ones counted from the end; the ``pos`` coordinate holds them as absolute positions."""
    if kind not in SITE_KINDS:
        raise SiteError(f"unknown site kind {kind!r}; valid kinds are: {', '.join(SITE_KINDS)}")
    if positions is not None and not per_position:
        raise MethodError(
            "positions= chooses the cells of a per-position sweep; pass per_position=True, or "
            "leave positions out to patch every position at once"
        )
    shape = model.shape
    layers = [None] if kind in LAYERLESS_KINDS else list(range(shape.n_layers))
    positions = resolve_positions(positions, seq_len) if per_position else [None]
    if kind in HEAD_KINDS and heads:
        inner, inner_dim = list(range(shape.heads_of(kind))), "head"
    elif kind in NEURON_KINDS:
        inner = list(neurons) if neurons is not None else list(range(shape.d_mlp))
        inner_dim = "neuron"
    else:
        inner, inner_dim = [None], None
    sites = []
    for layer in layers:
        for i in inner:
            for pos in positions:
                sites.append(Site(kind, layer,
                                  head=i if inner_dim == "head" else None,
                                  neuron=i if inner_dim == "neuron" else None, pos=pos))
    dims, coords = [], {}
    if layers != [None]:
        dims.append("layer")
        coords["layer"] = np.array(layers)
    if inner_dim is not None:
        dims.append(inner_dim)
        coords[inner_dim] = np.array(inner)
    if per_position:
        dims.append("pos")
        coords["pos"] = np.array(positions)
    return model.validate(sites, seq_len), {"dims": tuple(dims), "coords": coords}


def run_literal(model: Model, batch: PairBatch, sites: list[Site], direction: str, metric: MetricFn,
                progress: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One full forward pass per (site, batch): the oracle.

    Returns the metric per (site, pair) ``[site, pair]`` and the unpatched clean
    and corrupt answer logits ``[pair, answer, vocab]``, as the fast engine does.
    """
    ap = batch.answer_positions
    clean, corrupt = model.logits(batch.clean)[:, ap], model.logits(batch.corrupt)[:, ap]
    source, target = (batch.clean, batch.corrupt) if direction == "denoise" else (batch.corrupt, batch.clean)
    _, cache = model.run_with_cache(source, sites)
    out = torch.empty(len(sites), len(batch), dtype=torch.float64, device=batch.clean.device)
    for i, site in enumerate(tqdm(sites, desc="patching (literal)", disable=not progress, leave=False)):
        logits = model.run_with_patches(target, {site: cache[site]})
        out[i] = metric(logits[:, ap], batch.clean_answer, batch.corrupt_answer).double()
    return out, clean, corrupt


def position_options(positions: Sequence[int] | None, layout: dict) -> dict:
    """``{"positions": [...]}`` (absolute) for ``meta.options`` when a sweep chose positions."""
    return {} if positions is None else {"positions": [int(p) for p in layout["coords"]["pos"]]}
