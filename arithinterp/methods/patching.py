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
from functools import partial
from typing import Literal

import numpy as np
import plotly.graph_objects as go
import torch
import xarray as xr
from pydantic import Field

from arithinterp.distributed.executor import Executor
from arithinterp.errors import MethodError
from arithinterp.methods._common import make_meta
from arithinterp.methods.contrast import Direction, contrast, package
from arithinterp.methods.metrics import AnswerMode, MetricFn, PairBatch, prob
from arithinterp.methods.patching_engine import run_fast
from arithinterp.methods.registry import (
    MethodSpec,
    Options,
    ReportColumn,
    ReportView,
    RunContext,
    read_extra,
    register,
)
from arithinterp.methods.sweep import position_options, run_literal, sweep_sites
from arithinterp.models import Model
from arithinterp.models.site import SiteKind
from arithinterp.results import Result
from arithinterp.tasks import PromptPairs

__all__ = ["Direction", "Engine", "PatchingResult", "patch_activations", "sweep_sites"]
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


def patch_activations(
    model: Model,
    pairs: PromptPairs | PairBatch,
    *,
    kind: str = "attn_head",
    per_position: bool = True,
    positions: Sequence[int] | None = None,
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
    executor: Executor | None = None,
) -> PatchingResult:
    """Patch every site of ``kind`` from one run of each pair into the other.

    Args:
        model: the model.
        pairs: clean/corrupt pairs (:func:`arithinterp.tasks.make_pairs`) or a tokenized batch.
        kind: the site kind to sweep (``resid_pre``, ``attn_out``, ``attn_head``, ``mlp_post`` …).
        per_position: one cell per position (else all positions at once).
        positions: with ``per_position``, only these positions (default: all); negative ones
            count from the end (``[-1]``: the last prompt token). The result's ``pos``
            coordinate holds them as absolute positions; ``res.at(pos=-1)`` reads the last.
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
        executor: where the batches of pairs run (default: here). A
            :class:`~arithinterp.distributed.RayExecutor` spreads them over Ray workers, each
            holding its own copy of the model; per-pair scores merge in pair order before the
            bootstrap, so the result equals the local run bit for bit (at equal thread counts).
    """
    if engine not in ("fast", "literal"):
        raise MethodError(f"engine must be 'fast' or 'literal', got {engine!r}")
    relative = metric == "relative_prob"
    if relative and normalize:
        raise MethodError(
            "metric='relative_prob' is already relative to the unpatched run; pass normalize=False"
        )
    con = contrast(model, pairs, answer=answer, metric=metric, direction=direction, normalize=normalize,
                   batch_size=batch_size, n_boot=n_boot, extra_metrics={"relative_prob": prob})
    batch, metric_fn = con.batch, con.metric_fn
    sites, layout = sweep_sites(model, kind, per_position=per_position, seq_len=batch.seq_len, neurons=neurons,
                                positions=positions)
    sweep = partial(_patch_part, sites=sites, direction=direction, metric_fn=metric_fn, engine=engine)
    parts = list(con.parts(batch_size))
    if executor is None:
        outputs = [sweep(model, part, progress=progress) for part in parts]
    else:
        outputs = executor.map(sweep, parts, model=model, desc="patching", progress=progress)
    scores = torch.cat([o[0] for o in outputs], dim=1)  # [site, pair], in pair order
    clean_all, corrupt_all = torch.cat([o[1] for o in outputs]), torch.cat([o[2] for o in outputs])
    if relative:
        # Stolfo et al.'s relative change (P*(r) - P(r)) / P(r) of the clean answer's
        # probability, against the run that was patched; RELATIVE_EPS guards P(r) = 0.
        base = corrupt_all if direction == "denoise" else clean_all
        scores = (scores - base) / (base + RELATIVE_EPS)
        clean_all = (clean_all - base) / (base + RELATIVE_EPS)
        corrupt_all = (corrupt_all - base) / (base + RELATIVE_EPS)
    options = {"kind": kind, "per_position": per_position, **con.options, "engine": engine, "n_boot": n_boot}
    values, extras, meta = package(
        con, model, "patch_activations", scores, dims=layout["dims"], coords=layout["coords"],
        clean_mean=float(clean_all.mean()), corrupt_mean=float(corrupt_all.mean()),
        options={**options, **position_options(positions, layout)}, n_boot=n_boot, seed=seed,
        extra={"seq_len": batch.seq_len} if positions is not None else None,
    )
    return PatchingResult(values=values, meta=meta, extras=extras)


def _patch_part(model: Model, part: PairBatch, *, sites: list, direction: str, metric_fn: MetricFn,
                engine: str, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch of pairs: the metric per (site, pair) and the clean / corrupt runs' metric."""
    run = run_literal if engine == "literal" else run_fast
    scores, clean_logits, corrupt_logits = run(model, part, sites, direction, metric_fn, progress=progress)
    # one copy to the host per batch, after the engine's loops (a Ray worker's result must be too)
    return (scores.cpu(), metric_fn(clean_logits, part.clean_answer, part.corrupt_answer).double().cpu(),
            metric_fn(corrupt_logits, part.clean_answer, part.corrupt_answer).double().cpu())


# -- registration ---------------------------------------------------------------------------------

#: Bootstrap resamples of the report's confidence intervals.
REPORT_N_BOOT = 1000


class SweepOptions(Options):
    """Options shared by the site sweeps (patching and attribution patching); ``sites`` is the
    function's ``kind``."""

    sites: SiteKind = "attn_head"
    per_position: bool = True
    positions: list[int] | None = None
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
    common = dict(per_position=False, answer=ctx.answer, n_boot=REPORT_N_BOOT, seed=ctx.seed, progress=ctx.progress,
                  executor=ctx.executor)
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
