"""Causal mediation analysis (Stolfo, Belinkov & Sachan, EMNLP 2023).

A base prompt ``p`` with answer ``r`` is paired with a counterfactual ``p'``
with answer ``r'``. For each component (an MLP's output, an attention
layer's output, one head, one MLP neuron) and each prompt position the
component's output is cached on ``p'``; ``p`` is run again with that output
overwritten, and the softmax over the **full vocabulary** is read at the
answer position. With ``P`` the probabilities on ``p`` without intervention
and ``P*`` after it, per pair::

    IE = ½ [ (P(r) − P*(r)) / (P*(r) + eps)  +  (P*(r') − P(r')) / (P(r') + eps) ]
    TE = ½ [ (P(r|p) − P(r|p')) / (P(r|p') + eps)  +  (P(r'|p') − P(r'|p)) / (P(r'|p) + eps) ]

The paper's ratios are unbounded (a probability of 0 in a denominator); the
only change here is ``eps`` added to each of the four denominators, nothing
else (no clipping, no log). ``eps=0`` gives the paper's formula exactly, and
``inf`` where a denominator is 0. Effects are averaged over pairs; each cell
gets a percentile-bootstrap interval over pairs.

**A bounded companion.** On a model that is nearly certain of ``r``, ``P*(r)``
can be ~1e-9 after an intervention and the ratio reaches 1e9, which says more
about the denominator than the component. Beside the paper's IE every result
carries the *probability-difference* form of the same two terms,
``IE_pd = ½ [ (P(r) − P*(r)) + (P*(r') − P(r')) ]`` (extra ``prob_diff``, in
[-1, 1]), and ``unbounded``: whether ``|IE|`` exceeds :data:`IE_SANITY_BOUND`
(a ratio that large is the denominator talking; read ``prob_diff`` there).

**Answers.** Stolfo et al. read one answer token. With ``answer="single"``
every answer must be one token, or
:class:`~arithinterp.errors.TokenizationError` is raised before any forward
pass. With ``answer="multi"`` (the default, as for every method; with one-token
answers it is the paper's reading exactly), ``P(r)`` is the product over the answer's
tokens under teacher forcing of *that* answer
(``P(r|p) = Π_i P(r_i | p, r_<i)``, and ``P(r'|p)`` teacher-forces ``r'``),
and only prompt positions are patched: the answer positions of the two
teacher-forced sequences hold different tokens, so ``p'`` has no single
activation to copy there (and the prompt positions of ``p'`` do not depend on
what follows them).

**Same-result pairs** (type 2, ``make_pairs(..., "same_answer")``): ``r == r'``
and the formula is applied unchanged, as the paper's code does. It then reads
``½ [(P − P*)/P* + (P* − P)/P] = ½ (P − P*)² / (P · P*)`` (without ``eps``):
a symmetric, non-negative measure of how much the intervention moves the
probability of the (shared) result, 0 exactly when it does not. The
prediction-change rate then counts pairs where the argmax becomes ``r`` and
was not ``r`` before.

**Prediction change** (``change_rate``): the share of pairs whose prediction
*becomes* ``r'``: after the intervention the argmax is ``r'`` (every answer
token, teacher-forced, with ``answer="multi"``) and before it was not (the
paper's "desired" prediction change).

**Sharding.** Each batch of pairs is run on its own (its base, counterfactual and patched
runs), so ``executor=`` (:mod:`arithinterp.distributed`) runs the batches on workers that each
hold a copy of the model; per-pair effects merge in pair order before the bootstraps, and the
result equals the serial run bit for bit.

Intervention types are recorded in ``meta.options["stolfo_type"]``: 1 =
different operands and result (pair kinds ``operand_a``, ``operand_b``,
``digit``, ``random``), 2 = same result (``same_answer``), 3 = different
operator (``operator``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal, get_args

import numpy as np
import plotly.graph_objects as go
import torch
import xarray as xr
from plotly.subplots import make_subplots
from pydantic import Field

from arithinterp.distributed.executor import Executor
from arithinterp.errors import ConfigError
from arithinterp.methods._common import make_meta
from arithinterp.methods.contrast import contrast, package
from arithinterp.methods.metrics import AnswerMode, PairBatch
from arithinterp.methods.patching import REPORT_N_BOOT, check_pairs
from arithinterp.methods.registry import (
    MethodSpec,
    Options,
    ReportColumn,
    ReportView,
    RunContext,
    read_extra,
    register,
    site_values,
)
from arithinterp.methods.sweep import sweep_sites
from arithinterp.models import Model, Site, select
from arithinterp.progress_bars import tqdm
from arithinterp.results import Result, bootstrap_ci
from arithinterp.tasks import PromptPairs

Component = Literal["mlp_out", "attn_out"]
COMPONENTS: tuple[str, ...] = get_args(Component)

#: Stolfo et al.'s intervention type for each pair kind of :func:`arithinterp.tasks.make_pairs`.
STOLFO_TYPES: dict[str, int] = {
    "operand_a": 1, "operand_b": 1, "digit": 1, "random": 1, "same_answer": 2, "operator": 3,
}

ArrayLike = torch.Tensor | np.ndarray | float

#: ``|IE|`` above this is flagged ``unbounded``: a ratio this large means a near-zero denominator.
IE_SANITY_BOUND = 100.0


def indirect_effect(p_r: ArrayLike, p_star_r: ArrayLike, p_rp: ArrayLike, p_star_rp: ArrayLike,
                    *, eps: float = 1e-10) -> ArrayLike:
    """Stolfo's IE of one intervention, with ``eps`` added to both denominators.

    ``p_r`` / ``p_rp``: P(r), P(r') on the base prompt; ``p_star_r`` / ``p_star_rp``: after
    the intervention.
    """
    return 0.5 * ((p_r - p_star_r) / (p_star_r + eps) + (p_star_rp - p_rp) / (p_rp + eps))


def probability_difference(p_r: ArrayLike, p_star_r: ArrayLike, p_rp: ArrayLike,
                           p_star_rp: ArrayLike) -> ArrayLike:
    """The bounded companion of :func:`indirect_effect`: its two terms without the denominators,
    ``½ [(P(r) − P*(r)) + (P*(r') − P(r'))]``, in [-1, 1]."""
    return 0.5 * ((p_r - p_star_r) + (p_star_rp - p_rp))


def total_effect(p_r_base: ArrayLike, p_r_alt: ArrayLike, p_rp_alt: ArrayLike, p_rp_base: ArrayLike,
                 *, eps: float = 1e-10) -> ArrayLike:
    """Stolfo's TE of one pair: P(r|p), P(r|p'), P(r'|p'), P(r'|p), ``eps`` in both denominators."""
    return 0.5 * ((p_r_base - p_r_alt) / (p_r_alt + eps) + (p_rp_alt - p_rp_base) / (p_rp_base + eps))


class MediationResult(Result):
    """Mean indirect effect per (component | head | neuron, layer, pos) cell.

    ``values``: dims ``(component, layer, pos)`` for whole components,
    ``(layer, head, pos)`` with ``heads=True``, ``(layer, neuron, pos)`` with
    ``neurons=[...]`` (``pos`` absent when ``per_position=False``); ``pos_token``
    labels positions. Extras: ``ci_low`` / ``ci_high`` (bootstrap over pairs),
    ``change_rate``, ``prob_diff`` (the bounded companion, mean over pairs) and ``unbounded``
    (``|IE| >`` :data:`IE_SANITY_BOUND`). ``meta.extra``: ``total_effect`` with its interval and the
    base-run probabilities; ``meta.options``: pair kind, Stolfo type, ``eps`` …
    """

    metric_name = "indirect_effect"

    @property
    def total_effect(self) -> float:
        return float(self.meta.extra["total_effect"])

    def plot(self) -> go.Figure:
        v = self.values
        if v.ndim == 1:
            dim = v.dims[0]
            fig = go.Figure(go.Bar(x=[str(c) for c in v.coords[dim].values], y=v.values))
            fig.update_layout(title=self._title(), xaxis_title=str(dim), yaxis_title="IE")
            return fig
        facet = v.dims[0] if v.ndim == 3 else None
        panels = [v] if facet is None else [v.isel({facet: i}) for i in range(v.sizes[facet])]
        names = [""] if facet is None else [f"{facet} {c}" for c in v.coords[facet].values]
        limit = float(np.nanmax(np.abs(v.values))) if np.isfinite(v.values).any() else 1.0
        fig = make_subplots(rows=1, cols=len(panels), subplot_titles=names, shared_yaxes=True)
        for i, panel in enumerate(panels):
            ydim, xdim = panel.dims
            x = [str(c) for c in panel.coords[xdim].values]
            if xdim == "pos" and "pos_token" in panel.coords:
                x = [f"{p}:{t}" for p, t in zip(panel.coords["pos"].values, panel.coords["pos_token"].values)]
            fig.add_trace(go.Heatmap(
                z=panel.values, x=x, y=[f"{ydim} {c}" for c in panel.coords[ydim].values],
                colorscale="RdBu", zmid=0, zmin=-(limit or 1.0), zmax=limit or 1.0,
                showscale=i == 0, colorbar={"title": "IE"},
                hovertemplate=f"%{{y}}<br>{xdim} %{{x}}<br>IE %{{z:.4g}}<extra></extra>",
            ), row=1, col=i + 1)
            fig.update_xaxes(title_text=str(xdim), type="category", row=1, col=i + 1)
        fig.update_yaxes(autorange="reversed", type="category")
        fig.update_layout(title=self._title())
        return fig

    def _title(self) -> str:
        opts = self.meta.options
        kind = opts.get("pair_kind", "")
        te = self.meta.extra.get("total_effect")
        te_text = f", TE {te:.3g}" if isinstance(te, (int, float)) else ""
        return f"Indirect effect (Stolfo et al.), pairs: {kind} (type {opts.get('stolfo_type', '?')}){te_text}"

    @classmethod
    def example(cls) -> MediationResult:
        rng = np.random.default_rng(0)
        coords = {"component": np.array(["mlp_out", "attn_out"]), "layer": np.arange(2),
                  "pos": np.arange(4), "pos_token": ("pos", np.array(["3", "+", "4", "="]))}
        values = xr.DataArray(rng.normal(size=(2, 2, 4)), dims=("component", "layer", "pos"), coords=coords)
        extras = {"ci_low": values - 0.1, "ci_high": values + 0.1,
                  "change_rate": values.copy(data=rng.uniform(size=(2, 2, 4)))}
        meta = make_meta("mediate", None, options={"pair_kind": "operand_a", "stolfo_type": 1, "eps": 1e-10},
                         extra={"total_effect": 1.5, "total_effect_ci_low": 1.0, "total_effect_ci_high": 2.0})
        return cls(values=values, meta=meta, extras=extras)


@dataclass(frozen=True)
class _Runs:
    """The four teacher-forced sequences of a mediation batch and the answers they score.

    ``base_r`` = ``p + r[:-1]``, ``base_rp`` = ``p + r'[:-1]``, ``alt_r`` = ``p' + r[:-1]``,
    ``alt_rp`` = ``p' + r'[:-1]`` (all four are the bare prompts for one-token answers).
    """

    base_r: torch.Tensor
    base_rp: torch.Tensor
    alt_r: torch.Tensor
    alt_rp: torch.Tensor
    r: torch.Tensor
    rp: torch.Tensor
    positions: torch.Tensor
    prompt_len: int
    single: bool


def _prompt_len(batch: PairBatch) -> int:
    """Tokens before the first answer token (the positions mediation patches)."""
    return int(batch.answer_positions[0]) + 1


def _runs(batch: PairBatch, model: Model) -> _Runs:
    prompt_len = _prompt_len(batch)
    single = batch.clean_answer.shape[1] == 1
    base_p, alt_p = batch.clean[:, :prompt_len], batch.corrupt[:, :prompt_len]
    forced_rp = batch.corrupt_answer[:, :-1]
    dev = model.device
    return _Runs(
        base_r=batch.clean.to(dev), base_rp=torch.cat([base_p, forced_rp], 1).to(dev),
        alt_r=batch.corrupt.to(dev), alt_rp=torch.cat([alt_p, forced_rp], 1).to(dev),
        r=batch.clean_answer.to(dev), rp=batch.corrupt_answer.to(dev),
        positions=batch.answer_positions.to(dev), prompt_len=prompt_len, single=single,
    )


def _score(logits: torch.Tensor, positions: torch.Tensor, answer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced probability of ``answer`` (product over its tokens, float64) and
    whether the argmax is ``answer`` at every answer position (on the logits' device)."""
    at = logits[:, positions].double()
    logp = torch.log_softmax(at, -1).gather(-1, answer.unsqueeze(-1)).squeeze(-1).sum(-1)
    return logp.exp(), (at.argmax(-1) == answer).all(-1)


def _cells(model: Model, components: Sequence[str], heads: bool, neurons: Sequence[int] | None,
           per_position: bool, prompt_len: int) -> tuple[list[Site], tuple[str, ...], dict]:
    if heads or neurons is not None:
        kind = "attn_head" if heads else "mlp_post"
        sites, layout = sweep_sites(model, kind, per_position=per_position, seq_len=prompt_len,
                                    heads=True, neurons=neurons)
        return sites, layout["dims"], layout["coords"]
    sites, layout = [], {}
    for comp in components:
        comp_sites, layout = sweep_sites(model, comp, per_position=per_position, seq_len=prompt_len)
        sites.extend(comp_sites)
    coords = {"component": np.array(list(components)), **layout["coords"]}
    return sites, ("component", *layout["dims"]), coords


def _validate(components: Sequence[str], heads: bool, neurons: Sequence[int] | None,
              eps: float, pairs: object) -> tuple[str, ...]:
    if not isinstance(pairs, PromptPairs):
        raise ConfigError(
            f"mediate needs PromptPairs (arithinterp.tasks.make_pairs), got {type(pairs).__name__}: "
            "it reads both answers r and r' and the pair kind"
        )
    if isinstance(components, str):
        components = (components,)
    components = tuple(components)
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown or not components:
        raise ConfigError(
            f"unknown mediation component(s) {unknown or '(none given)'}; valid components: "
            f"{', '.join(COMPONENTS)} (heads=True for attention heads, neurons=[...] for MLP neurons)"
        )
    if len(set(components)) != len(components):
        raise ConfigError(f"components {list(components)} repeat a component")
    if heads and neurons is not None:
        raise ConfigError("heads=True and neurons=[...] are two sweeps with different axes; run mediate twice")
    if neurons is not None and len(neurons) == 0:
        raise ConfigError("neurons=[] selects no neuron; pass neuron indices or None")
    if not eps >= 0:
        raise ConfigError(f"eps must be >= 0, got {eps!r}")
    return components


def _stacked_patch(value: torch.Tensor, rows: slice, prompt_len: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Overwrite ``rows`` of the selected activation with ``value`` (only its first
    ``prompt_len`` positions when the site keeps every position)."""

    def fn(current: torch.Tensor) -> torch.Tensor:
        # Clone: `current` may be a view of the activation the model still reads.
        out = current.clone()
        if prompt_len is None:
            out[rows] = value
        else:
            out[rows, :prompt_len] = value[:, :prompt_len]
        return out

    return fn


def _mediate_part(model: Model, part: PairBatch, *, sites: list[Site], batch_size: int, eps: float,
                  bar: tqdm | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """One batch of pairs on ``model`` (here, or a worker's copy): :func:`_batch_effects`, on the host."""
    return _batch_effects(model, _runs(part, model), sites, batch_size=batch_size, eps=eps, bar=bar)


def _batch_effects(model: Model, runs: _Runs, sites: list[Site], *, batch_size: int, eps: float,
                   bar: tqdm | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair IE and prediction change for every cell ``[cell, pair]``, and base-run scores
    (``base["prob_diff"]``: the bounded companion per cell and pair)."""
    b = runs.r.shape[0]
    wholes = list(dict.fromkeys(s.whole() for s in sites))
    base_r_logits = model.logits(runs.base_r)
    p_r, _ = _score(base_r_logits, runs.positions, runs.r)
    base_rp_logits = base_r_logits if runs.single else model.logits(runs.base_rp)
    p_rp, hit_rp = _score(base_rp_logits, runs.positions, runs.rp)
    # Prompt positions of p' do not depend on the teacher-forced answer that follows.
    alt_r_logits, cache = model.run_with_cache(runs.alt_r, wholes)
    p_r_alt, _ = _score(alt_r_logits, runs.positions, runs.r)
    alt_rp_logits = alt_r_logits if runs.single else model.logits(runs.alt_rp)
    p_rp_alt, _ = _score(alt_rp_logits, runs.positions, runs.rp)

    # kept on the model's device until every cell is done: one copy to the host per batch
    ie = torch.empty(len(sites), b, dtype=torch.float64, device=p_r.device)
    pd_ = torch.empty_like(ie)
    changed = torch.empty_like(ie)
    per_pass = max(1, batch_size // b)
    for start in range(0, len(sites), per_pass):
        group = sites[start:start + per_pass]
        patches = {
            site: _stacked_patch(select(cache[site.whole()], site), slice(j * b, (j + 1) * b),
                                 runs.prompt_len if site.pos is None else None)
            for j, site in enumerate(group)
        }
        g = len(group)
        logits_r = model.run_with_patches(runs.base_r.repeat(g, 1), patches)
        logits_rp = logits_r if runs.single else model.run_with_patches(runs.base_rp.repeat(g, 1), patches)
        star_r, _ = _score(logits_r, runs.positions, runs.r.repeat(g, 1))
        star_rp, hit_after = _score(logits_rp, runs.positions, runs.rp.repeat(g, 1))
        star_r, star_rp, hit_after = star_r.view(g, b), star_rp.view(g, b), hit_after.view(g, b)
        ie[start:start + g] = indirect_effect(p_r, star_r, p_rp, star_rp, eps=eps)
        pd_[start:start + g] = probability_difference(p_r, star_r, p_rp, star_rp)
        changed[start:start + g] = (hit_after & ~hit_rp).double()
        if bar is not None:
            bar.update(g)
    base = {"p_r_base": p_r, "p_rp_base": p_rp, "p_r_alt": p_r_alt, "p_rp_alt": p_rp_alt,
            "correct_base": _score(base_r_logits, runs.positions, runs.r)[1].double(), "prob_diff": pd_}
    return ie.cpu(), changed.cpu(), {k: v.cpu() for k, v in base.items()}


def mediate(
    model: Model,
    pairs: PromptPairs,
    *,
    components: Sequence[Component] = ("mlp_out", "attn_out"),
    per_position: bool = True,
    heads: bool = False,
    neurons: Sequence[int] | None = None,
    answer: AnswerMode = "multi",
    eps: float = 1e-10,
    batch_size: int = 64,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
    executor: Executor | None = None,
) -> MediationResult:
    """Stolfo et al.'s causal mediation analysis: the indirect effect of each component.

    Args:
        model: the model.
        pairs: base/counterfactual pairs from :func:`arithinterp.tasks.make_pairs`
            (clean = base ``p``, corrupt = counterfactual ``p'``).
        components: whole-layer components to sweep: ``mlp_out``, ``attn_out``.
        per_position: one cell per prompt position (else all prompt positions at once).
        heads: sweep each attention head (``attn_head``) instead of ``components``.
        neurons: sweep these MLP neurons of every layer (``mlp_post``) instead of ``components``.
        answer: ``"multi"`` (product over teacher-forced answer tokens; see the module
            docstring; the paper's reading for one-token answers) or ``"single"`` (one-token
            answers only, else an error before any forward pass).
        eps: added to every IE/TE denominator (the paper's ratios are unbounded).
        batch_size: rows per forward pass; with few pairs several cells share a pass.
        n_boot: bootstrap resamples over pairs for ``ci_low`` / ``ci_high``.
        seed: bootstrap seed.
        progress: show a progress bar.
        executor: where the batches of pairs run (default: here). A
            :class:`~arithinterp.distributed.RayExecutor` spreads them over Ray workers, each
            holding its own copy of the model; per-pair effects merge in pair order before the
            bootstraps (cells and total effect), so the result equals the local run bit for bit
            (at equal thread counts).

    Every input is checked (components, answer tokens, equal clean/corrupt lengths,
    sites) before the first forward pass.
    """
    components = _validate(components, heads, neurons, eps, pairs)
    # The counterfactual's activations go into the base run (a "noise" patch); the IE reads
    # probabilities itself, so the contrast's metric only validates, and nothing is normalised.
    con = contrast(model, pairs, answer=answer, metric="prob", direction="noise", normalize=False,
                   batch_size=batch_size, n_boot=n_boot)
    prompt_len = _prompt_len(con.batch)
    sites, dims, coords = _cells(model, components, heads, neurons, per_position, prompt_len)

    n, parts = len(con.batch), list(con.parts(batch_size))
    part_fn = partial(_mediate_part, sites=sites, batch_size=batch_size, eps=eps)
    if executor is None:  # a bar over cells: a batch of many cells is a long wait
        with tqdm(total=len(sites) * len(parts), desc="mediation", disable=not progress, leave=False) as bar:
            outputs = [part_fn(model, part, bar=bar) for part in parts]
    else:
        outputs = executor.map(part_fn, parts, model=model, desc="mediation", progress=progress)
    ies, changes, bases = zip(*outputs)  # per batch, in pair order
    change = torch.cat(changes, 1).numpy()
    prob_diff = torch.cat([b.pop("prob_diff") for b in bases], 1).numpy()
    base = {k: torch.cat([b[k] for b in bases]).numpy() for k in bases[0]}

    te = total_effect(base["p_r_base"], base["p_r_alt"], base["p_rp_alt"], base["p_rp_base"], eps=eps)
    te_mean, te_low, te_high = bootstrap_ci(te, axis=0, n_boot=n_boot, seed=seed)
    if "pos" in dims:
        coords["pos_token"] = ("pos", np.array(con.batch.str_tokens[:prompt_len]))
    kind = "attn_head" if heads else "mlp_post" if neurons is not None else list(components)
    values, extras, meta = package(
        con, model, "mediate", torch.cat(ies, 1), dims=dims, coords=coords, clean_mean=None, corrupt_mean=None,
        options={"pair_kind": pairs.kind, "stolfo_type": STOLFO_TYPES.get(pairs.kind),
                 "components": kind, "per_position": per_position,
                 "neurons": None if neurons is None else [int(i) for i in neurons],
                 "answer": answer, "eps": eps, "n_pairs": n, "n_boot": n_boot,
                 "corrupt_hash": pairs.corrupt.hash},
        n_boot=n_boot, seed=seed,
        extra={"total_effect": float(te_mean), "total_effect_ci_low": float(te_low),
               "total_effect_ci_high": float(te_high),
               "p_r_base": float(base["p_r_base"].mean()), "p_rp_base": float(base["p_rp_base"].mean()),
               "p_r_alt": float(base["p_r_alt"].mean()), "p_rp_alt": float(base["p_rp_alt"].mean()),
               "base_accuracy": float(base["correct_base"].mean())},
    )
    extras["change_rate"] = values.copy(data=change.mean(-1).reshape(values.shape))
    extras["prob_diff"] = values.copy(data=prob_diff.mean(-1).reshape(values.shape))
    extras["unbounded"] = values.copy(data=np.abs(values.values) > IE_SANITY_BOUND)
    return MediationResult(values=values, meta=meta, extras=extras)


# -- registration ---------------------------------------------------------------------------------

#: Neurons given a mediation IE in a report: the top ones by |AtP| (each costs one patched run per pair).
MEDIATION_NEURONS = 64


class MediationOptions(Options):
    """Options of :func:`mediate` (Stolfo et al. 2023)."""

    components: tuple[Component, ...] = ("mlp_out", "attn_out")
    per_position: bool = True
    heads: bool = False
    answer: AnswerMode = "multi"
    eps: float = Field(1e-10, ge=0)
    batch_size: int = Field(64, ge=1)
    n_boot: int = Field(1000, ge=1)


def mediation_neurons(results: dict, model: Model) -> list[int]:
    """Neuron indices given a mediation IE: the top :data:`MEDIATION_NEURONS` by |AtP| in any layer
    (``results["attribution_neurons"]``), else the first ones."""
    atp = results.get("attribution_neurons")
    if atp is None:
        return list(range(min(MEDIATION_NEURONS, model.shape.d_mlp)))
    best = np.abs(atp.effect.transpose("layer", "neuron").values).max(0)
    order = np.argsort(-best, kind="stable")[:MEDIATION_NEURONS]
    return sorted(int(i) for i in order)


def _report_mediation(ctx: RunContext) -> dict:
    common = dict(per_position=False, answer=ctx.answer, n_boot=REPORT_N_BOOT, seed=ctx.seed, progress=ctx.progress,
                  executor=ctx.executor)
    pairs = ctx.require_pairs()
    return {
        "mediation": mediate(ctx.model, pairs, heads=True, **common),
        "mediation_neurons": mediate(ctx.model, pairs, neurons=mediation_neurons(ctx.results, ctx.model), **common),
    }


def _read_unbounded(result: MediationResult, sites: list[Site]) -> np.ndarray:
    """Whether each site's mean IE exceeds :data:`IE_SANITY_BOUND` (``None`` where not measured)."""
    ie = site_values(result.values, sites)
    out = np.array(np.abs(ie) > IE_SANITY_BOUND, dtype=object)
    out[~np.isfinite(ie)] = None
    return out


register(MethodSpec(
    name="mediation", function=mediate, inputs="pairs", result=MediationResult, options=MediationOptions,
    check=check_pairs,
    report=ReportView(
        run=_report_mediation,
        results=("mediation", "mediation_neurons"),
        columns=(*ReportColumn.pair("mediation_ie", "mediation", "mediation_neurons",
                                    description="Stolfo et al.'s indirect effect (an unbounded ratio)"),
                 *ReportColumn.pair("mediation_pd", "mediation", "mediation_neurons", read_extra("prob_diff"),
                                    "the IE's probability-difference form, in [-1, 1]"),
                 *ReportColumn.pair("ie_unbounded", "mediation", "mediation_neurons", _read_unbounded,
                                    f"|mediation_ie| > {IE_SANITY_BOUND:g}: read mediation_pd", missing=None)),
        figures={"mediation": "Causal mediation (Stolfo et al.): heads"},
        order=30,
    ),
))
