"""Attribution patching: activation patching approximated by gradients.

Activation patching (:func:`arithinterp.methods.patching.patch_activations`)
runs one forward pass per patched site. Attribution patching (Nanda 2023;
Syed, Rager & Conmy 2023, "AtP") replaces each of those passes by the first
term of its Taylor expansion around the run being patched (the *target*)::

    metric(patched) - metric(target)  ~=  (a_source - a_target) . d metric / d a |target

summed over the site's feature dims (``d_head`` for heads and q/k/v,
``d_model`` for residual sites, ``k_pos`` for attention patterns, nothing for
one neuron). Every site of a sweep comes out of one forward and one backward
pass of the target run per batch, plus one cached forward pass of the source
run. ``direction="denoise"`` patches clean into corrupt (target = corrupt
run, source = clean run); ``"noise"`` the reverse, as in patching.

``method="ig"`` is the integrated-gradients variant of EAP-IG (Hanna,
Pezzelle & Belinkov 2024, "Have Faith in Faithfulness", arXiv:2403.17806;
Marks et al. 2024 use IG over node activations instead). The model's input
embeddings (site ``embed``; position embeddings are the same in both runs,
so this is the straight line between the two runs' ``resid_pre[0]``) are
interpolated from the target run's to the source run's, ``x(t) = x_target +
t (x_source - x_target)``, the gradient at every site is averaged over the
``m = ig_steps`` points ``t = k/m, k = 0..m-1``, and multiplied by the same
activation difference ``a_source - a_target`` as AtP. With ``ig_steps=1`` this
is AtP. (The authors' code takes the points from the source end instead,
``k = 0..m-1`` measured from the patched-in run; the two Riemann sums differ by
O(1/m) and share the limit.) In the limit, the score of the input itself over
all positions is exactly ``metric(source) - metric(target)``
(the completeness axiom of Sundararajan et al. 2017).

``method="atp_star"`` (AtP*: QK fix, GradDrop), ``"ig_activations"`` (IG on each swept
activation), ``"relp"`` (LRP propagation rules) and ``freeze_norm=True`` (norm scales held
constant) change the backward pass; they are defined in
:mod:`arithinterp.methods.attribution_rules`, and
:func:`~arithinterp.methods.attribution_calibration.calibrate_attribution` scores each
against exact patching.

Values use the scale of ``patch_activations`` so the two compare cell by
cell: a cell estimates the (optionally normalised) metric of the patched run,
``(metric(target) + estimate - corrupt_mean) / (clean_mean - corrupt_mean)``
per pair. For ``denoise`` that is ``estimate / (clean_mean - corrupt_mean)``
on average (0 = no effect); for ``noise`` it is ``1 + estimate / (clean_mean
- corrupt_mean)`` (1 = no effect, 0 = the site alone breaks the clean answer).
``AttributionResult.effect`` subtracts that no-effect baseline.

Every batch of pairs is independent (its own forward and backward passes), so
``executor=`` (:mod:`arithinterp.distributed`) runs the batches on workers that each hold a
copy of the model; the per-pair estimates merge in pair order before the bootstrap, and
the result equals the serial run bit for bit.

Edge attribution (:func:`edge_attribution_patch`, EAP) is in
:mod:`arithinterp.methods.edge_attribution`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Literal

import numpy as np
import torch
import xarray as xr
from pydantic import Field
from scipy import stats

from arithinterp.distributed.executor import Executor
from arithinterp.errors import ConfigError, MethodError, ResultError
from arithinterp.methods._common import make_meta
from arithinterp.methods.attribution_rules import (
    METHODS,
    RECOMMENDED,
    RECOMMENDED_IG_STEPS,
    RECOMMENDED_LABEL,
    AttributionMethod,
    Passes,
    check_method,
    functional,
    graddrop_layers,
    gradient_passes,
    qk_fix,
)
from arithinterp.methods.contrast import Contrast, Direction, contrast, map_parts, package
from arithinterp.methods.metrics import AnswerMode, MetricFn, PairBatch
from arithinterp.methods.patching import (
    REPORT_N_BOOT,
    PatchingResult,
    SweepOptions,
    check_pairs,
    patch_activations,
)
from arithinterp.methods.registry import (
    MethodSpec,
    ReportColumn,
    ReportView,
    RunContext,
    register,
    site_values,
)
from arithinterp.methods.sweep import position_options, sweep_sites
from arithinterp.models import Model, Site
from arithinterp.models.site import HEAD_KINDS, LAYERLESS_KINDS, NEURON_KINDS
from arithinterp.results import Result
from arithinterp.tasks import PromptPairs

__all__ = [
    "AttributionMethod",
    "AttributionResult",
    "attribution_patch",
    "compare_with_exact",
]



class AttributionResult(Result):
    """Attribution-patching estimate of each site's patching effect.

    ``values``: dims and coordinates as :class:`~arithinterp.methods.patching.PatchingResult`
    for the same options (``(layer, head | neuron, pos)`` as swept), on the same
    scale; extras ``ci_low`` / ``ci_high`` (bootstrap over pairs) and, for ``atp_star`` on
    models of more than one layer, ``graddrop`` (AtP*'s unsigned GradDrop score, on the
    effect scale). ``meta.extra`` holds the clean / corrupt baselines, ``baseline`` (the value of a site with
    no effect) and, after ``validate=True``, ``validation`` (see
    :func:`compare_with_exact`).
    """

    metric_name = "attribution"

    @property
    def effect(self) -> xr.DataArray:
        """``values`` minus the no-effect baseline: the estimated change of the metric."""
        return self.values - float(self.meta.extra.get("baseline", 0.0))

    @classmethod
    def example(cls) -> AttributionResult:
        rng = np.random.default_rng(0)
        coords = {"layer": np.arange(2), "head": np.arange(3), "pos": np.arange(4),
                  "pos_token": ("pos", np.array(["1", "+", "2", "="]))}
        values = xr.DataArray(rng.normal(size=(2, 3, 4)), dims=("layer", "head", "pos"), coords=coords)
        meta = make_meta("attribution_patch", None,
                         options={"kind": "attn_head", "direction": "denoise", "metric": "logit_diff",
                                  "normalize": True, "method": "atp"},
                         extra={"clean_mean": 1.0, "corrupt_mean": 0.0, "baseline": 0.0})
        return cls(values=values, meta=meta, extras={"ci_low": values - 0.1, "ci_high": values + 0.1})


# -- shared machinery (also used by edge attribution) ---------------------------------------


NO_GRADIENT_METRICS: dict[str, str] = {
    "accuracy": "is piecewise constant, so its gradient is zero everywhere; attribute 'logit_diff', "
                "'logprob' or 'prob' (or patch_activations for accuracy)",
}


def attribution_contrast(model: Model, pairs: PromptPairs | PairBatch, *, direction: str, metric,
                         normalize: bool, answer: str, method: str, ig_steps: int, batch_size: int,
                         n_boot: int, freeze_norm: bool = False) -> Contrast:
    """The contrast of an attribution method (also used by edge attribution), checked before any pass.

    The shared options raise :class:`MethodError` (through :func:`contrast`);
    An unknown ``method`` raises :class:`ConfigError`; ``ig_steps < 1`` and a model
    with no rule for ``method`` / ``freeze_norm`` raise :class:`MethodError`.
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(ig_steps, bool) or not isinstance(ig_steps, int) or ig_steps < 1:
        raise MethodError(f"ig_steps must be a positive int (interpolation points of {method!r}), "
                          f"got {ig_steps!r}")
    if not isinstance(freeze_norm, bool):
        raise ConfigError(f"freeze_norm must be True or False, got {freeze_norm!r}")
    check_method(model, method, freeze_norm)
    return contrast(model, pairs, answer=answer, metric=metric, direction=direction, normalize=normalize,
                    batch_size=batch_size, n_boot=n_boot, refused_metrics=NO_GRADIENT_METRICS)


def baselines(direction: Direction, normalize: bool, clean_mean: float, corrupt_mean: float) -> float:
    """The value a site with no effect gets on patching's scale."""
    if normalize:
        return 0.0 if direction == "denoise" else 1.0
    return corrupt_mean if direction == "denoise" else clean_mean


# -- node attribution -----------------------------------------------------------------------


def _node_scores(kind: str, delta: torch.Tensor, grad: torch.Tensor,
                 neurons: Sequence[int] | None) -> torch.Tensor:
    """Per-pair first-order effects of one whole site, ``[batch, inner, pos]``."""
    prod = delta * grad
    if kind == "pattern":  # [b, head, q_pos, k_pos]; a position selects the query
        return prod.sum(-1)
    if kind in HEAD_KINDS:  # [b, pos, head, d_head]
        return prod.sum(-1).transpose(1, 2)
    if kind in NEURON_KINDS:  # [b, pos, neuron]
        out = prod.transpose(1, 2)
        return out if neurons is None else out[:, list(neurons)]
    return prod.sum(-1).unsqueeze(1)  # [b, pos, d_model]


def attribution_patch(
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
    method: AttributionMethod = "atp",
    freeze_norm: bool = False,
    ig_steps: int = 10,
    batch_size: int = 32,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
    validate: bool = False,
    executor: Executor | None = None,
) -> AttributionResult:
    """Estimate :func:`patch_activations` for every site of ``kind`` from gradients.

    Args:
        model: the model.
        pairs: clean/corrupt pairs (:func:`arithinterp.tasks.make_pairs`) or a tokenized batch.
        kind: the site kind (``attn_head``, ``q``/``k``/``v``, ``pattern``, ``mlp_post``,
            ``resid_pre`` / ``resid_mid`` / ``resid_post``, ``attn_out``, ``mlp_out``,
            ``embed``, ``final_resid``).
        per_position: one cell per position (else the sum over positions, which is
            the first-order estimate of patching all positions at once).
        positions: with ``per_position``, only these positions (default: all); negative ones
            count from the end, as in :func:`patch_activations`.
        neurons: for ``mlp_post``, which neurons (default: all).
        direction: ``"denoise"`` (estimate patching clean into corrupt) or ``"noise"``.
        metric: ``logit_diff``, ``logprob``, ``prob`` or a differentiable
            ``fn(logits, clean, corrupt) -> [batch]`` (``accuracy`` has no gradient).
        normalize: rescale as patching does (corrupt run 0, clean run 1).
        answer: ``"multi"`` (teacher-forced answer tokens) or ``"single"``.
        method: ``"atp"``, ``"atp_star"`` (QK fix for ``q`` / ``k``, GradDrop in
            ``extras["graddrop"]``), ``"ig"`` (EAP-IG on the inputs), ``"ig_activations"``
            (IG on each swept activation) or ``"relp"`` (LRP rules); see
            :mod:`arithinterp.methods.attribution_rules`.
        freeze_norm: hold every LayerNorm / RMSNorm scale at its value on the run the
            gradient is taken at (:mod:`arithinterp.models.replacement`).
        ig_steps: interpolation points for ``ig`` and ``ig_activations``.
        batch_size: pairs per pass.
        n_boot: bootstrap resamples for the confidence intervals.
        seed: bootstrap seed.
        progress: show a progress bar.
        validate: also run the exact literal patching sweep and store
            :func:`compare_with_exact`'s numbers (k=10) in ``meta.extra["validation"]``.
        executor: where the batches of pairs run (default: here). A
            :class:`~arithinterp.distributed.RayExecutor` spreads them over Ray workers, each
            holding its own copy of the model; per-pair estimates merge in pair order before the
            bootstrap, so the result equals the local run bit for bit (at equal thread counts).
            ``validate``'s exact sweep runs there too.
    """
    if neurons is not None and kind not in NEURON_KINDS:
        raise ConfigError(f"neurons= applies to mlp_post, not {kind!r}")
    con = attribution_contrast(model, pairs, direction=direction, metric=metric, normalize=normalize,
                               answer=answer, method=method, ig_steps=ig_steps, batch_size=batch_size,
                               n_boot=n_boot, freeze_norm=freeze_norm)
    batch = con.batch
    _, layout = sweep_sites(model, kind, per_position=per_position, seq_len=batch.seq_len, neurons=neurons,
                            positions=positions)
    estimate, target, source, dropped = _estimates(
        model, con, layout, kind=kind, per_position=per_position, positions=positions, neurons=neurons,
        method=method, freeze_norm=freeze_norm, ig_steps=ig_steps, batch_size=batch_size, progress=progress,
        executor=executor)
    clean, corrupt = (source, target) if direction == "denoise" else (target, source)
    clean_mean, corrupt_mean = float(clean.mean()), float(corrupt.mean())
    # The estimate of each patched run's metric, on patching's scale.
    patched = target.reshape(-1, *[1] * (estimate.ndim - 1)) + estimate
    options = {"kind": kind, "per_position": per_position, **position_options(positions, layout),
               **con.options, "method": method, "freeze_norm": freeze_norm, "n_boot": n_boot,
               **({"ig_steps": ig_steps} if method in ("ig", "ig_activations") else {}),
               **({"neurons": [int(n) for n in neurons]} if neurons is not None else {})}
    extra = {"baseline": baselines(direction, normalize, clean_mean, corrupt_mean),
             **({"seq_len": batch.seq_len} if positions is not None else {})}
    values, extras, meta = package(con, model, "attribution_patch", patched.movedim(0, -1),
                                   dims=layout["dims"], coords=layout["coords"], clean_mean=clean_mean,
                                   corrupt_mean=corrupt_mean, options=options, extra=extra, n_boot=n_boot,
                                   seed=seed)
    if dropped is not None:
        gd = dropped.mean(0)
        if normalize and clean_mean != corrupt_mean:
            gd = gd / abs(clean_mean - corrupt_mean)
        extras["graddrop"] = values.copy(data=gd.numpy())
    result = AttributionResult(values=values, extras=extras, meta=meta)
    if not validate:
        return result
    return _validated(result, model, batch, kind=kind, per_position=per_position, positions=positions,
                      neurons=neurons, direction=direction, metric=metric, normalize=normalize, answer=answer,
                      batch_size=batch_size, n_boot=n_boot, seed=seed, progress=progress, executor=executor)


def _validated(result: AttributionResult, model: Model, batch: PairBatch, **sweep) -> AttributionResult:
    """``result`` with :func:`compare_with_exact`'s numbers against the literal exact sweep (k=10)
    in ``meta.extra["validation"]``."""
    exact = patch_activations(model, batch, engine="literal", **sweep)
    validation = {"engine": "literal", **compare_with_exact(result, exact, k=10)}
    return result.replace(meta=replace(result.meta, extra={**result.meta.extra, "validation": validation}))


def _estimates(model: Model, con: Contrast, layout: dict, *, kind: str, per_position: bool,
               positions: Sequence[int] | None, neurons: Sequence[int] | None, method: str, freeze_norm: bool,
               ig_steps: int, batch_size: int, progress: bool, executor: Executor | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-pair estimates ``[pair, *cells]``, the target and source runs' metric ``[pair]`` and
    AtP*'s per-pair GradDrop scores (``None`` unless ``atp_star`` on more than one layer), from
    the batches of ``con`` run here or on ``executor``'s workers and merged in pair order."""
    layers: list[int | None] = [None] if kind in LAYERLESS_KINDS else list(range(model.shape.n_layers))
    wholes = [Site(kind, layer) for layer in layers]
    qk = method == "atp_star" and kind in ("q", "k")
    if qk:
        functional(model)  # a model the QK fix cannot recompute fails here, before any pass
    pos_index = torch.as_tensor(layout["coords"]["pos"]) if per_position and positions is not None else None
    part_fn = partial(_attribute_part, kind=kind, wholes=wholes, needed=_needed_sites(wholes, qk), qk=qk,
                      shape=[len(layout["coords"][d]) for d in layout["dims"]], metric_fn=con.metric_fn,
                      direction=con.direction, method=method, ig_steps=ig_steps, freeze_norm=freeze_norm,
                      neurons=neurons, per_position=per_position, pos_index=pos_index,
                      graddrop=method == "atp_star" and model.shape.n_layers > 1)
    outputs = map_parts(part_fn, list(con.parts(batch_size)), model=model, executor=executor,
                        desc=f"attribution ({method})", progress=progress)
    estimate, dropped, target, source = (torch.cat(x) if x[0] is not None else None for x in zip(*outputs))
    return estimate, target, source, dropped


def _attribute_part(model: Model, part: PairBatch, *, kind: str, wholes: list[Site], needed: list[Site],
                    qk: bool, shape: list[int], metric_fn: MetricFn, direction: Direction, method: str,
                    ig_steps: int, freeze_norm: bool, neurons: Sequence[int] | None, per_position: bool,
                    pos_index: torch.Tensor | None, graddrop: bool
                    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """One batch of pairs on ``model`` (here, or a worker's copy): per-pair estimates
    ``[b, *cells]``, GradDrop scores (or ``None``), and the target and source runs' metric."""
    ft = functional(model) if qk else None
    passes = gradient_passes(model, part, needed, metric_fn, direction, method, ig_steps,
                             freeze_norm=freeze_norm, integrate=wholes)
    cells = _at_positions(_cells(kind, wholes, passes, passes.grad, neurons, ft, per_position), pos_index)
    dropped = None
    if graddrop:
        gd = _graddrop(kind, wholes, needed, passes, neurons, ft, per_position, model.shape.n_layers)
        dropped = _at_positions(gd, pos_index).reshape(len(part), *shape).double().cpu()
    # one copy to the host per batch, after the passes (a Ray worker's result must be too)
    return (cells.reshape(len(part), *shape).double().cpu(), dropped, passes.target_scores.cpu(),
            passes.source_scores.cpu())


def _at_positions(cells: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """The cells at the swept positions (``index``: their absolute positions; ``None``: all)."""
    return cells if index is None else cells[..., index]


def _needed_sites(wholes: list[Site], qk: bool) -> list[Site]:
    """The whole sites the gradient passes cache: the swept ones, and for the QK fix the
    queries, keys and patterns of their layers."""
    if not qk:
        return wholes
    return [Site(kind, w.layer) for w in wholes for kind in ("q", "k", "pattern")]


def _cells(kind: str, wholes: list[Site], passes: Passes, grads: dict[Site, torch.Tensor],
           neurons: Sequence[int] | None, ft, per_position: bool) -> torch.Tensor:
    """Per-pair estimates ``[b, layer, inner, pos]`` (``pos`` summed unless ``per_position``)."""
    out = []
    for w in wholes:
        if ft is not None:  # AtP*'s QK fix
            q, k, pattern = (Site(kind, w.layer) for kind in ("q", "k", "pattern"))
            out.append(qk_fix(ft, kind, passes.target[q], passes.target[k], passes.source[q],
                              passes.source[k], grads[pattern]))
        else:
            out.append(_node_scores(kind, passes.source[w] - passes.target[w], grads[w], neurons))
    cells = torch.stack(out, 1)
    return cells if per_position else cells.sum(-1)


def _graddrop(kind: str, wholes: list[Site], needed: list[Site], passes: Passes,
              neurons: Sequence[int] | None, ft, per_position: bool, n_layers: int) -> torch.Tensor:
    """AtP*'s GradDrop score per pair: ``Σ_l |estimate with layer l's writes cut| / (L - 1)``
    (Kramár et al. 2024, eq. 11; one backward pass per layer)."""
    total = None
    for layer, grads in graddrop_layers(passes, needed, n_layers):
        cells = _cells(kind, wholes, passes, grads, neurons, ft, per_position)
        if kind in ("attn_out", "mlp_out"):  # the cut site is the node itself: no path is left
            cells[:, layer] = 0.0
        total = cells.abs() if total is None else total + cells.abs()
    return total / (n_layers - 1)


# -- validation against exact patching ------------------------------------------------------

_SHARED_OPTIONS = ("kind", "per_position", "positions", "direction", "metric", "normalize", "answer")


def _effect(result: Result) -> xr.DataArray:
    extra, opts = result.meta.extra, result.meta.options
    if "baseline" in extra:
        base = float(extra["baseline"])
    else:
        base = baselines(opts.get("direction", "denoise"), bool(opts.get("normalize", True)),
                         float(extra.get("clean_mean", 0.0)), float(extra.get("corrupt_mean", 0.0)))
    return result.values - base


#: :func:`compare_with_exact`'s ``spearman_major`` ranks the cells whose exact effect is at least
#: this fraction of the largest.
MAJOR_FRACTION = 0.01


def compare_with_exact(attribution: AttributionResult, patching: PatchingResult, *,
                       k: int = 10) -> dict[str, float | int]:
    """How well an attribution result ranks sites like exact patching of the same sweep.

    Both results must have the same dims and labels and the same sweep options.
    Returns ``spearman`` (rank correlation of the cells' effects), ``pearson``,
    ``top_k_overlap`` (``|top-k ∩ top-k| / k`` by absolute effect, ``k`` capped at
    the number of cells), ``k``, ``n_cells``, ``mean_abs_error`` and
    ``max_abs_error`` (attribution minus exact, on the results' scale), and
    ``spearman_major`` / ``n_major``: the rank correlation over the cells whose exact
    ``|effect|`` is at least :data:`MAJOR_FRACTION` of the largest (the components a circuit
    would keep), and how many there are; a diagnostic beside ``spearman``, not a substitute.
    Cells where either value is NaN are left out. Values below float32 resolution
    (``1e-6`` of the result's largest ``|effect|``) count as exactly zero, so that
    roundoff in one result does not rank cells the other leaves at zero. Cells that are exactly zero in
    both (positions before the first differing token) count, and raise the
    correlation; compare the errors too.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive int, got {k!r}")
    if attribution.dims != patching.dims or attribution.sizes != patching.sizes:
        raise ResultError(
            f"the results cover different cells: attribution {attribution.sizes}, patching {patching.sizes}"
        )
    for dim in attribution.dims:
        if not np.array_equal(attribution.values[dim].values, patching.values[dim].values):
            raise ResultError(f"the results label dim {dim!r} differently")
    a_opts, p_opts = attribution.meta.options, patching.meta.options
    differ = [o for o in _SHARED_OPTIONS if o in a_opts and o in p_opts and a_opts[o] != p_opts[o]]
    if differ:
        pairs = ", ".join(f"{o}: {a_opts[o]!r} vs {p_opts[o]!r}" for o in differ)
        raise ConfigError(f"the results were computed with different options ({pairs})")
    a = np.asarray(_effect(attribution).transpose(*attribution.dims).values, dtype=float).ravel()
    p = np.asarray(_effect(patching).transpose(*attribution.dims).values, dtype=float).ravel()
    keep = np.isfinite(a) & np.isfinite(p)
    a, p = _snap(a[keep]), _snap(p[keep])
    n = int(a.size)
    k = min(k, n)
    top_a = set(np.argsort(-np.abs(a), kind="stable")[:k].tolist())
    top_p = set(np.argsort(-np.abs(p), kind="stable")[:k].tolist())
    major = np.abs(p) >= MAJOR_FRACTION * np.abs(p).max() if n else np.zeros(0, dtype=bool)
    return {
        "spearman": _correlation(stats.spearmanr, a, p),
        "spearman_major": _correlation(stats.spearmanr, a[major], p[major]),
        "n_major": int(major.sum()),
        "pearson": _correlation(stats.pearsonr, a, p),
        "top_k_overlap": len(top_a & top_p) / k if k else float("nan"),
        "k": k,
        "n_cells": n,
        "mean_abs_error": float(np.abs(a - p).mean()) if n else float("nan"),
        "max_abs_error": float(np.abs(a - p).max()) if n else float("nan"),
    }


def _snap(x: np.ndarray, rel: float = 1e-6) -> np.ndarray:
    top = float(np.abs(x).max()) if x.size else 0.0
    return np.where(np.abs(x) <= rel * top, 0.0, x)


def _correlation(fn: Callable, a: np.ndarray, p: np.ndarray) -> float:
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(p) == 0:
        return float("nan")
    return float(fn(a, p)[0])


# -- registration ---------------------------------------------------------------------------------


class AttributionOptions(SweepOptions):
    """Options of :func:`attribution_patch` (AtP, AtP*, EAP-IG, IG on activations, RelP)."""

    metric: Literal["logit_diff", "logprob", "prob"] = "logit_diff"
    method: AttributionMethod = "atp"
    freeze_norm: bool = False
    ig_steps: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)


def _report_attribution(ctx: RunContext) -> dict:
    # The report's "atp" column and agree_atp use the method best calibrated against exact
    # patching on the zoo (docs/methods/attribution.md); the results' meta names it.
    batch = ctx.batch(ctx.answer)
    method, freeze_norm = RECOMMENDED
    common = dict(per_position=False, answer=ctx.answer, n_boot=REPORT_N_BOOT, seed=ctx.seed, progress=ctx.progress,
                  method=method, freeze_norm=freeze_norm, ig_steps=RECOMMENDED_IG_STEPS, executor=ctx.executor)
    return {"attribution_heads": attribution_patch(ctx.model, batch, kind="attn_head", **common),
            "attribution_neurons": attribution_patch(ctx.model, batch, kind="mlp_post", **common)}


def _read_effect(result: AttributionResult, sites: list[Site]) -> np.ndarray:
    return site_values(result.effect, sites)


register(MethodSpec(
    name="attribution", function=attribution_patch, inputs="pairs", result=AttributionResult,
    options=AttributionOptions, aliases={"sites": "kind"}, check=check_pairs,
    report=ReportView(
        run=_report_attribution,
        results=("attribution_heads", "attribution_neurons"),
        columns=ReportColumn.pair("atp", "attribution_heads", "attribution_neurons", _read_effect,
                                  f"attribution estimate of the patching effect ({RECOMMENDED_LABEL}, "
                                  "the method best calibrated against exact patching)"),
        figures={"attribution_heads": f"Attribution patching ({RECOMMENDED_LABEL}): heads"},
        order=20,
    ),
))
