"""Activation patching: which activations carry the difference between two prompts.

``patch_activations(model, pairs, kind=...)`` sweeps every site of one kind
(per layer, and per head / neuron / position as asked). For each cell it
runs one prompt of each pair with that activation taken from the other:

- ``direction="denoise"``: run the corrupt prompt, patch in the clean activation
  (does this site restore the clean answer?);
- ``direction="noise"``: run the clean prompt, patch in the corrupt activation
  (does this site break it?).

Each cell's effect is the metric (see :mod:`arithinterp.methods.metrics`)
averaged over pairs, optionally normalised so 0 = corrupt run and 1 = clean
run, with a bootstrap confidence interval over pairs.

Two engines compute the same numbers: ``"literal"`` runs one full forward
pass per cell through the backend (the oracle the tests trust), ``"fast"``
(see :mod:`arithinterp.methods.patching_engine`) shares work across cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import plotly.graph_objects as go
import torch
import xarray as xr
from pydantic import Field
from tqdm.auto import tqdm

from arithinterp.errors import MethodError, SiteError
from arithinterp.methods._common import make_meta
from arithinterp.methods.metrics import (
    AnswerMode,
    MetricFn,
    PairBatch,
    normalise,
    prob,
    resolve_metric,
    tokenize_pairs,
)
from arithinterp.methods.registry import (
    MethodSpec,
    Options,
    ReportColumn,
    ReportView,
    RunContext,
    read_extra,
    register,
)
from arithinterp.models import Model, Site
from arithinterp.models.site import HEAD_KINDS, LAYERLESS_KINDS, NEURON_KINDS, SITE_KINDS, SiteKind
from arithinterp.results import Result, bootstrap_ci
from arithinterp.tasks import PromptPairs

Direction = Literal["denoise", "noise"]
RELATIVE_EPS = 1e-10
"""Added to P(r) in the denominator of ``metric="relative_prob"``."""
Engine = Literal["fast", "literal"]


class PatchingResult(Result):
    """Effect of patching each site on the metric.

    ``values``: dims from ``(layer, head | neuron, pos)`` as swept; extras
    ``ci_low`` / ``ci_high`` (bootstrap over pairs). ``meta.options`` records
    kind, direction, metric and normalisation; ``meta.extra`` the clean and
    corrupt baselines.
    """

    metric_name = "effect"

    def plot(self) -> go.Figure:
        v = self.values
        if "head" in v.dims and "pos" in v.dims:
            v = v.mean("pos") if v.sizes["pos"] > 1 else v.isel(pos=0)
            title_extra = " (mean over positions)"
        else:
            title_extra = ""
        v = v.squeeze(drop=True) if v.ndim > 2 else v
        opts = self.meta.options
        title = f"{opts.get('direction', '')} patching of {opts.get('kind', '')}: {opts.get('metric', '')}" + (
            " (normalised)" if opts.get("normalize") else ""
        ) + title_extra
        if v.ndim == 1:
            dim = v.dims[0]
            fig = go.Figure(go.Bar(x=[str(c) for c in v.coords[dim].values], y=v.values))
            fig.update_layout(title=title, xaxis_title=dim, yaxis_title="effect")
            return fig
        ydim, xdim = v.dims[0], v.dims[1]
        x_labels = [str(c) for c in v.coords[xdim].values]
        if xdim == "pos" and "pos_token" in v.coords:
            x_labels = [f"{p}:{t}" for p, t in zip(v.coords["pos"].values, v.coords["pos_token"].values)]
        limit = float(np.nanmax(np.abs(v.values))) or 1.0
        fig = go.Figure(go.Heatmap(
            z=v.values, x=x_labels, y=[f"{ydim} {c}" for c in v.coords[ydim].values],
            colorscale="RdBu", zmid=0, zmin=-limit, zmax=limit, colorbar={"title": "effect"},
            hovertemplate=f"%{{y}}<br>{xdim} %{{x}}<br>effect %{{z:.4f}}<extra></extra>",
        ))
        fig.update_layout(title=title, xaxis_title=xdim, yaxis={"autorange": "reversed"})
        return fig

    @classmethod
    def example(cls) -> PatchingResult:
        rng = np.random.default_rng(0)
        vals = rng.normal(size=(2, 3, 4))
        coords = {"layer": np.arange(2), "head": np.arange(3), "pos": np.arange(4),
                  "pos_token": ("pos", np.array(["1", "+", "2", "="]))}
        values = xr.DataArray(vals, dims=("layer", "head", "pos"), coords=coords)
        extras = {"ci_low": values - 0.1, "ci_high": values + 0.1}
        meta = make_meta("patch_activations", None, options={"kind": "attn_head", "direction": "denoise",
                                                             "metric": "logit_diff", "normalize": True})
        return cls(values=values, meta=meta, extras=extras)


def sweep_sites(model: Model, kind: str, *, per_position: bool, seq_len: int,
                heads: bool = True, neurons: Sequence[int] | None = None) -> tuple[list[Site], dict]:
    """The sites of a sweep in (layer, head|neuron, pos) order, and the result coordinates."""
    if kind not in SITE_KINDS:
        raise SiteError(f"unknown site kind {kind!r}; valid kinds are: {', '.join(SITE_KINDS)}")
    shape = model.shape
    layers = [None] if kind in LAYERLESS_KINDS else list(range(shape.n_layers))
    positions = list(range(seq_len)) if per_position else [None]
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
        coords["pos"] = np.arange(seq_len)
    return model.validate(sites, seq_len), {"dims": tuple(dims), "coords": coords}


def _run_literal(model: Model, batch: PairBatch, sites: list[Site], direction: Direction,
                 metric: MetricFn, progress: bool) -> torch.Tensor:
    """One full forward pass per (site, batch): the oracle. Returns ``[site, pair]``."""
    source, target = (batch.clean, batch.corrupt) if direction == "denoise" else (batch.corrupt, batch.clean)
    _, cache = model.run_with_cache(source, sites)
    out = torch.empty(len(sites), len(batch), dtype=torch.float64)
    for i, site in enumerate(tqdm(sites, desc="patching (literal)", disable=not progress, leave=False)):
        logits = model.run_with_patches(target, {site: cache[site]})
        out[i] = metric(logits[:, batch.answer_positions], batch.clean_answer, batch.corrupt_answer).double()
    return out


def patch_activations(
    model: Model,
    pairs: PromptPairs | PairBatch,
    *,
    kind: str = "attn_head",
    per_position: bool = True,
    neurons: Sequence[int] | None = None,
    direction: Direction = "denoise",
    metric: str | MetricFn = "logit_diff",
    normalize: bool = True,
    answer: AnswerMode = "multi",
    engine: Engine = "fast",
    batch_size: int = 64,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> PatchingResult:
    """Patch every site of ``kind`` from one run of each pair into the other.

    Args:
        model: the model.
        pairs: clean/corrupt pairs (:func:`arithinterp.tasks.make_pairs`) or a tokenized batch.
        kind: the site kind to sweep (``resid_pre``, ``attn_out``, ``attn_head``, ``mlp_post`` …).
        per_position: one cell per position (else all positions at once).
        neurons: for ``mlp_post``, which neurons (default: all).
        direction: ``"denoise"`` (clean into corrupt) or ``"noise"`` (corrupt into clean).
        metric: ``logit_diff``, ``logprob``, ``prob``, ``accuracy``, ``relative_prob`` (Stolfo et
            al.'s relative change of the clean answer's probability, (P* − P) / P, against the
            patched run; needs ``normalize=False``) or ``fn(logits, clean, corrupt) -> [batch]``.
        normalize: rescale so the corrupt run is 0 and the clean run is 1.
        answer: ``"multi"`` (teacher-forced answer tokens) or ``"single"`` (one-token answers).
        engine: ``"fast"`` or ``"literal"`` (one forward pass per cell; the oracle).
        batch_size: pairs per forward pass.
        n_boot: bootstrap resamples for the confidence intervals.
        seed: bootstrap seed.
        progress: show progress bars.
    """
    if direction not in ("denoise", "noise"):
        raise MethodError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    if engine not in ("fast", "literal"):
        raise MethodError(f"engine must be 'fast' or 'literal', got {engine!r}")
    relative = metric == "relative_prob"
    if relative and normalize:
        raise MethodError(
            "metric='relative_prob' is already relative to the unpatched run; pass normalize=False"
        )
    metric_name, metric_fn = ("relative_prob", prob) if relative else resolve_metric(metric)
    batch = pairs if isinstance(pairs, PairBatch) else tokenize_pairs(pairs, model.tokenizer, answer=answer)
    sites, layout = sweep_sites(model, kind, per_position=per_position, seq_len=batch.seq_len, neurons=neurons)

    per_pair, clean_scores, corrupt_scores = [], [], []
    for start in range(0, len(batch), batch_size):
        part = batch.slice(start, start + batch_size)
        if engine == "literal":
            clean_logits = model.logits(part.clean)[:, part.answer_positions]
            corrupt_logits = model.logits(part.corrupt)[:, part.answer_positions]
            per_pair.append(_run_literal(model, part, sites, direction, metric_fn, progress))
        else:
            from arithinterp.methods.patching_engine import run_fast

            scores_part, clean_logits, corrupt_logits = run_fast(
                model, part, sites, direction, metric_fn, progress=progress
            )
            per_pair.append(scores_part)
        clean_scores.append(metric_fn(clean_logits, part.clean_answer, part.corrupt_answer).double())
        corrupt_scores.append(metric_fn(corrupt_logits, part.clean_answer, part.corrupt_answer).double())
    scores = torch.cat(per_pair, dim=1)  # [site, pair]
    clean_all, corrupt_all = torch.cat(clean_scores), torch.cat(corrupt_scores)
    if relative:
        # Stolfo et al.'s relative change (P*(r) - P(r)) / P(r) of the clean answer's
        # probability, against the run that was patched; RELATIVE_EPS guards P(r) = 0.
        base = corrupt_all if direction == "denoise" else clean_all
        scores = (scores - base) / (base + RELATIVE_EPS)
        clean_all = (clean_all - base) / (base + RELATIVE_EPS)
        corrupt_all = (corrupt_all - base) / (base + RELATIVE_EPS)
    clean_mean = float(clean_all.mean())
    corrupt_mean = float(corrupt_all.mean())
    if normalize:
        scores = normalise(scores, clean_mean, corrupt_mean)
    shape = [len(layout["coords"][d]) for d in layout["dims"]]
    samples = scores.numpy().reshape(*shape, len(batch))
    mean, low, high = bootstrap_ci(samples, axis=-1, n_boot=n_boot, seed=seed)
    coords = dict(layout["coords"])
    if "pos" in layout["dims"]:
        coords["pos_token"] = ("pos", np.array(batch.str_tokens))
    dims = layout["dims"]
    values = xr.DataArray(np.asarray(mean), dims=dims, coords=coords)
    extras = {"ci_low": xr.DataArray(np.asarray(low), dims=dims, coords=coords),
              "ci_high": xr.DataArray(np.asarray(high), dims=dims, coords=coords)}
    meta = make_meta(
        "patch_activations", model, getattr(pairs, "clean", None),
        options={"kind": kind, "per_position": per_position, "direction": direction,
                 "metric": metric_name, "normalize": normalize, "answer": answer, "engine": engine,
                 "n_pairs": len(batch), "n_boot": n_boot},
        seed=seed,
        extra={"clean_mean": clean_mean, "corrupt_mean": corrupt_mean},
    )
    return PatchingResult(values=values, meta=meta, extras=extras)


# -- registration ---------------------------------------------------------------------------------

#: Bootstrap resamples of the report's confidence intervals.
REPORT_N_BOOT = 1000


class SweepOptions(Options):
    """Options shared by the site sweeps (patching and attribution patching); ``sites`` is the
    function's ``kind``."""

    sites: SiteKind = "attn_head"
    per_position: bool = True
    direction: Direction = "denoise"
    normalize: bool = True
    answer: AnswerMode = "multi"
    n_boot: int = Field(1000, ge=1)


class PatchingOptions(SweepOptions):
    """Options of :func:`patch_activations`."""

    metric: Literal["logit_diff", "logprob", "prob", "accuracy", "relative_prob"] = "logit_diff"
    engine: Engine = "fast"
    batch_size: int = Field(64, ge=1)


def check_pairs(ctx: RunContext, options) -> None:
    ctx.batch(getattr(options, "answer", "single"))


def _report_patching(ctx: RunContext) -> dict:
    batch = ctx.batch(ctx.answer)
    common = dict(per_position=False, answer=ctx.answer, n_boot=REPORT_N_BOOT, seed=ctx.seed, progress=ctx.progress)
    return {"patching_heads": patch_activations(ctx.model, batch, kind="attn_head", **common),
            "patching_neurons": patch_activations(ctx.model, batch, kind="mlp_post", **common)}


register(MethodSpec(
    name="patching", function=patch_activations, inputs="pairs", result=PatchingResult, options=PatchingOptions,
    aliases={"sites": "kind"}, check=check_pairs,
    report=ReportView(
        run=_report_patching,
        results=("patching_heads", "patching_neurons"),
        columns=(*ReportColumn.pair("patch_effect", "patching_heads", "patching_neurons",
                                    description="exact activation patching effect (normalised)"),
                 *ReportColumn.pair("patch_ci_low", "patching_heads", "patching_neurons", read_extra("ci_low")),
                 *ReportColumn.pair("patch_ci_high", "patching_heads", "patching_neurons", read_extra("ci_high"))),
        figures={"patching_heads": "Activation patching: heads", "patching_neurons": "Activation patching: neurons"},
        order=10,
    ),
))
