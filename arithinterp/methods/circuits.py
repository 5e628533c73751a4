"""Circuit discovery: rank components, grow a circuit until it is faithful.

:func:`discover_circuit` scores every component (attention heads, whole MLPs
or single MLP neurons) by its normalised patching effect — exact
(:func:`~arithinterp.methods.patching.patch_activations`, all positions at
once) or approximated by gradients
(:func:`~arithinterp.methods.attribution.attribution_patch`) — then grows a
circuit either in rank order (``"topk"``) or greedily (``"greedy"``: at each
step add the component that raises faithfulness most). Faithfulness is
Nikankin et al.'s mean-ablation score (see
:func:`~arithinterp.methods.faithfulness.faithfulness`): everything outside the
circuit is replaced by its per-position mean over the reference prompts.
The smallest circuit that reaches ``target`` is returned with the whole
faithfulness-vs-size curve and a completeness check (the full model with
only the circuit mean-ablated should lose most of its score).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import numpy as np
import plotly.graph_objects as go
import torch
import xarray as xr
from pydantic import Field

from arithinterp.errors import ConfigError, MethodError
from arithinterp.methods._common import check_positive_int, make_meta
from arithinterp.methods.attribution import (
    NO_GRADIENT_METRICS,
    AttributionResult,
    attribution_patch,
)
from arithinterp.methods.circuit_ablation import CircuitAblation, check_ablation
from arithinterp.methods.circuit_growth import (
    grow_greedy,
    grow_topk,
    rank_components,
    reaches,
    tie_tolerance,
    trivial_reason,
)
from arithinterp.methods.circuit_plot import circuit_figure
from arithinterp.methods.contrast import Direction, contrast
from arithinterp.methods.faithfulness import (
    FAITHFULNESS_METRICS,
    CircuitScorer,
    FaithfulnessMetric,
    faithfulness_ratio,
)
from arithinterp.methods.metrics import AnswerMode, PairBatch
from arithinterp.methods.mib import MIB_FRACTIONS, area_under_curve, score_curve
from arithinterp.methods.patching import PatchingResult, check_pairs, patch_activations
from arithinterp.methods.registry import (
    MethodSpec,
    Options,
    ReportColumn,
    ReportView,
    RunContext,
    register,
)
from arithinterp.models import Model, Site
from arithinterp.progress_bars import tqdm
from arithinterp.results import Result, resultclass
from arithinterp.tasks import PromptPairs, PromptSet

__all__ = ["CircuitResult", "ComponentScores", "circuit_figure", "discover_circuit"]

Score = Literal["patching", "attribution"]
Grow = Literal["topk", "greedy"]
ComponentKind = Literal["attn_head", "mlp_out", "mlp_post"]
COMPONENT_KINDS: tuple[str, ...] = get_args(ComponentKind)


@resultclass
class CircuitResult(Result):
    """A circuit found by :func:`discover_circuit`.

    ``values``: dim ``component`` (labels ``L0H1``, ``MLP0``, ``L0N17``), the
    component's absolute normalised score, in the order the circuit grew
    (then the components never added, by score). Coordinates on ``component``:
    ``kind``, ``comp_layer``, ``comp_head``, ``comp_neuron`` (-1 where not
    applicable). Extras: ``faithfulness`` (F of the circuit made of this
    component and every one before it; NaN where not evaluated) and
    ``in_circuit`` (1 for the returned circuit, else 0).

    Fields: ``circuit`` (labels), ``target``, ``reached``, ``circuit_faithfulness``,
    and the completeness check: ``full_score`` (metric of the model),
    ``circuit_ablated_score`` (the model with only the circuit mean-ablated),
    ``empty_score`` (everything mean-ablated); ``trivial`` (the circuit is the whole model or
    every component of one kind), ``note`` (why it is trivial, an unreached target, a growth
    that needed a pair look-ahead, in words), ``tolerance`` (differences of F below it are
    ties, :mod:`~arithinterp.methods.circuit_growth`) and ``chosen_by`` (per member, how greedy
    growth chose it: ``greedy``, ``pair``, ``block``; ``topk`` for rank-order growth).

    MIB scores of the component ranking (:mod:`arithinterp.methods.mib`), under the same ablation
    and metric: ``mib_faithfulness`` (f at each of MIB's fractions of components kept, top of the
    ranking first), ``mib_n_kept`` (how many components that is), ``cpr`` (area under the curve,
    higher is better) and ``cmd`` (area between the curve and 1, lower is better).
    """

    circuit: list[str]
    target: float
    reached: bool
    circuit_faithfulness: float | None = None
    full_score: float | None = None
    circuit_ablated_score: float | None = None
    empty_score: float | None = None
    trivial: bool = False
    note: str = ""
    tolerance: float | None = None
    chosen_by: list[str] | None = None
    cpr: float | None = None
    cmd: float | None = None
    mib_faithfulness: list[float] | None = None
    mib_n_kept: list[int] | None = None

    metric_name = "score"

    @property
    def sites(self) -> list[Site]:
        """The circuit as :class:`Site` objects (usable with ``faithfulness``)."""
        v = self.values
        out = []
        for label in self.circuit:
            c = v.sel(component=label)
            kind, layer = str(c.coords["kind"].values), int(c.coords["comp_layer"].values)
            head, neuron = int(c.coords["comp_head"].values), int(c.coords["comp_neuron"].values)
            out.append(Site(kind, layer, head=head if head >= 0 else None,
                            neuron=neuron if neuron >= 0 else None))
        return out

    def summary(self) -> dict:
        """The circuit in numbers (the pipeline's run report shows it as a table)."""
        opts = self.meta.options
        return {"circuit": ", ".join(self.circuit), "size": len(self.circuit), "reached": self.reached,
                "faithfulness": self.circuit_faithfulness, "target": self.target, "trivial": self.trivial,
                "note": self.note, "ablation": opts.get("ablation", "mean"), "metric": opts.get("metric"),
                "cpr": self.cpr, "cmd": self.cmd, "full_score": self.full_score,
                "circuit_ablated_score": self.circuit_ablated_score, "empty_score": self.empty_score}

    @property
    def curve(self) -> xr.DataArray:
        """Faithfulness against circuit size (dim ``component``: the component added last)."""
        return self.extras["faithfulness"]

    def plot(self) -> go.Figure:
        frame = self.to_frame()
        done = frame[frame["faithfulness"].notna()]
        size = np.arange(1, len(done) + 1)
        fig = go.Figure(go.Scatter(
            x=size, y=done["faithfulness"], mode="lines+markers", name="faithfulness",
            text=done["component"], hovertemplate="size %{x} (+%{text})<br>F %{y:.3f}<extra></extra>",
        ))
        fig.add_trace(go.Bar(x=size, y=done[self.metric], name="component score", opacity=0.4,
                             text=done["component"]))
        fig.add_hline(y=self.target, line_dash="dash", annotation_text=f"target {self.target}")
        opts = self.meta.options
        fig.update_layout(
            title=f"circuit faithfulness ({opts.get('metric', '')}, {opts.get('grow', '')} by "
                  f"{opts.get('score', '')}): {len(self.circuit)} components",
            xaxis_title="circuit size", yaxis_title="faithfulness",
        )
        return fig

    @classmethod
    def example(cls) -> CircuitResult:
        labels = ["MLP0", "L0H0", "L0H1", "L0H2"]
        coords = {"component": np.array(labels),
                  "kind": ("component", np.array(["mlp_out", "attn_head", "attn_head", "attn_head"])),
                  "comp_layer": ("component", np.array([0, 0, 0, 0])),
                  "comp_head": ("component", np.array([-1, 0, 1, 2])),
                  "comp_neuron": ("component", np.array([-1, -1, -1, -1]))}
        values = xr.DataArray(np.array([1.0, 0.5, 0.4, 0.0]), dims=("component",), coords=coords)
        extras = {"faithfulness": values.copy(data=np.array([0.1, 0.6, 1.0, 1.0])),
                  "in_circuit": values.copy(data=np.array([1, 1, 1, 0]))}
        meta = make_meta("discover_circuit", None, options={"metric": "nl", "grow": "topk", "score": "patching"})
        return cls(values=values, meta=meta, extras=extras, circuit=labels[:3], target=0.9, reached=True,
                   circuit_faithfulness=1.0, full_score=1.0, circuit_ablated_score=0.2, empty_score=0.1)


# ---- scoring ------------------------------------------------------------------------------

ComponentScores = Mapping[str, Result] | Sequence[Result] | Result
"""Precomputed component scores: patching / attribution results of whole components."""


def _sweep_options(kind: str, direction: str, score_metric: str, answer: str) -> dict:
    """The options a component-scoring sweep runs with (and a precomputed one must have had)."""
    return dict(kind=kind, per_position=False, direction=direction, metric=score_metric, normalize=True,
                answer=answer)


def _component_effects(result: Result, kind: str, *, score: Score, direction: Direction
                       ) -> tuple[list[Site], np.ndarray]:
    """Sites of one component kind and their absolute normalised effect, from a sweep's result."""
    if score == "patching":
        effect = result.values if direction == "denoise" else 1.0 - result.values
    else:
        effect = result.effect if direction == "denoise" else -result.effect
    effect = effect.transpose(*[d for d in ("layer", "head", "neuron") if d in effect.dims])
    sites = []
    for layer in effect.coords["layer"].values:
        if kind == "attn_head":
            sites += [Site(kind, int(layer), head=int(h)) for h in effect.coords["head"].values]
        elif kind == "mlp_post":
            sites += [Site(kind, int(layer), neuron=int(n)) for n in effect.coords["neuron"].values]
        else:
            sites.append(Site(kind, int(layer)))
    return sites, np.abs(np.asarray(effect.values, dtype=float).reshape(-1))


def _score_kind(model: Model, batch: PairBatch, kind: str, *, score: Score, direction: Direction,
                score_metric: str, answer: AnswerMode, progress: bool) -> Result:
    """The sweep that scores one component kind (all positions at once)."""
    options = _sweep_options(kind, direction, score_metric, answer)
    sweep = patch_activations if score == "patching" else attribution_patch
    return sweep(model, batch, **options, n_boot=1, progress=progress)


def _given_scores(model: Model, scores: ComponentScores | None, components: Sequence[str], *, score: Score,
                  direction: str, score_metric: str, answer: str, answer_index: int | None,
                  batch: PairBatch) -> dict[str, Result]:
    """Precomputed sweeps by component kind, checked to be the sweeps discovery would run."""
    if scores is None:
        return {}
    if answer_index is not None:
        raise MethodError("precomputed scores do not record which answer token they were scored on; "
                          "pass scores=None together with answer_index")
    if isinstance(scores, Result):
        given = [scores]
    elif isinstance(scores, Mapping):
        given = list(scores.values())
        for key, res in scores.items():
            if res.meta.options.get("kind") != key:
                raise MethodError(f"scores[{key!r}] is a sweep of {res.meta.options.get('kind')!r}")
    else:
        given = list(scores)
    wanted = PatchingResult if score == "patching" else AttributionResult
    out: dict[str, Result] = {}
    for res in given:
        kind = res.meta.options.get("kind")
        if kind not in components or kind in out:
            raise MethodError(f"scores: a {kind!r} sweep is not one of components={list(components)} "
                              "or is given twice")
        if type(res) is not wanted:
            raise MethodError(f"score={score!r} ranks by {wanted.__name__}; scores has a {type(res).__name__}")
        _check_given(model, res, kind, direction=direction, score_metric=score_metric, answer=answer, batch=batch)
        out[kind] = res
    return out


def _check_given(model: Model, res: Result, kind: str, *, direction: str, score_metric: str, answer: str,
                 batch: PairBatch) -> None:
    opts = res.meta.options
    expected = {**_sweep_options(kind, direction, score_metric, answer), "n_pairs": len(batch)}
    if isinstance(res, AttributionResult):
        expected["method"] = "atp"
    differ = {k: (opts.get(k), v) for k, v in expected.items() if opts.get(k) != v}
    if differ:
        said = ", ".join(f"{k}={got!r} (needs {need!r})" for k, (got, need) in differ.items())
        raise MethodError(f"the precomputed {kind} scores were computed with other options: {said}")
    if res.meta.dataset_hash is not None and batch.dataset_hash is not None \
            and res.meta.dataset_hash != batch.dataset_hash:
        raise MethodError(f"the precomputed {kind} scores are of other prompts (dataset hash "
                          f"{res.meta.dataset_hash} vs {batch.dataset_hash})")
    shape = model.shape
    inner = {"attn_head": {"head": shape.heads_of(kind)} if kind == "attn_head" else {},
             "mlp_post": {"neuron": shape.d_mlp}}.get(kind, {})
    if dict(res.values.sizes) != {"layer": shape.n_layers, **inner}:
        raise MethodError(f"the precomputed {kind} scores cover {dict(res.values.sizes)}; discovery needs "
                          f"every component: {({'layer': shape.n_layers, **inner})}")


# ---- discovery ----------------------------------------------------------------------------


def _check(components: Sequence[str], score: str, grow: str, target: float, metric: str,
           max_size: int | None) -> None:
    if not components:
        raise ConfigError(f"components must name at least one of {', '.join(COMPONENT_KINDS)}")
    bad = [c for c in components if c not in COMPONENT_KINDS]
    if bad:
        raise ConfigError(f"unknown component kinds {bad}; valid: {', '.join(COMPONENT_KINDS)}")
    if "mlp_out" in components and "mlp_post" in components:
        raise ConfigError("choose whole MLPs ('mlp_out') or single neurons ('mlp_post'), not both")
    if score not in get_args(Score):
        raise ConfigError(f"unknown score {score!r}; valid: {', '.join(get_args(Score))}")
    if grow not in get_args(Grow):
        raise ConfigError(f"unknown grow {grow!r}; valid: {', '.join(get_args(Grow))}")
    if metric not in FAITHFULNESS_METRICS:
        raise ConfigError(f"unknown faithfulness metric {metric!r}; valid: {', '.join(FAITHFULNESS_METRICS)}")
    if not 0.0 < float(target) <= 1.5:
        raise ConfigError(f"target is a faithfulness (1 = the full model); got {target}")
    if max_size is not None and max_size < 1:
        raise ConfigError(f"max_size must be >= 1, got {max_size}")


def _scoring_batch(model: Model, pairs: PromptPairs | PairBatch, *, score: Score, score_metric: str,
                   direction: str, answer: AnswerMode, answer_index: int | None) -> PairBatch:
    """The pairs that rank the components, tokenized once and checked before any forward pass."""
    refused = NO_GRADIENT_METRICS if score == "attribution" else None
    batch = contrast(model, pairs, answer=answer, metric=score_metric, direction=direction,
                     refused_metrics=refused).batch
    if answer_index is None:
        return batch
    n_answer = int(batch.answer_positions.shape[0])
    if isinstance(answer_index, bool) or not isinstance(answer_index, int) or not 0 <= answer_index < n_answer:
        raise ConfigError(f"answer_index must be an int in 0..{n_answer - 1} (the answer has {n_answer} "
                          f"tokens), got {answer_index!r}")
    return batch.answer_token(answer_index)


def _grow(ablator: CircuitScorer, sites: list[Site], ranked: list[int], *, grow: Grow, limit: int, target: float,
          full: float, empty: float, tol: float, progress: bool) -> tuple[list[int], list[float], list[str]]:
    """The order components join the circuit, the faithfulness after each join, and how each
    was chosen (:mod:`arithinterp.methods.circuit_growth`)."""

    def f_of(members: Sequence[int]) -> float:
        kept = ablator.keep([sites[j] for j in members])
        ratio = faithfulness_ratio(np.array([kept]), np.array([full]), np.array([empty]))
        return float("nan") if ratio is None else ratio

    bar = tqdm(total=limit, desc=f"growing circuit ({grow})", disable=not progress, leave=False)
    try:
        if grow == "topk":
            return grow_topk(f_of, ranked, limit=limit, step=lambda: bar.update(1))
        return grow_greedy(f_of, ranked, limit=limit, target=target, tol=tol, step=lambda: bar.update(1))
    finally:
        bar.close()


def _score_tolerance(sweep: Result, dtype: torch.dtype) -> float:
    """The tie tolerance of a sweep's normalised scores (from its clean and corrupt means)."""
    extra = sweep.meta.extra or {}
    return tie_tolerance(extra.get("clean_mean"), extra.get("corrupt_mean"), dtype)


def _component_axis(sites: list[Site], scores: list[float], axis: list[int]) -> xr.DataArray:
    """Component scores along ``axis`` (indices into ``sites``), labeled as :class:`CircuitResult` says."""
    coords = {
        "component": np.array([sites[i].label for i in axis]),
        "kind": ("component", np.array([sites[i].kind for i in axis])),
        "comp_layer": ("component", np.array([int(sites[i].layer) for i in axis])),
        "comp_head": ("component", np.array([-1 if sites[i].head is None else sites[i].head for i in axis])),
        "comp_neuron": ("component", np.array([-1 if sites[i].neuron is None else sites[i].neuron
                                               for i in axis])),
    }
    return xr.DataArray(np.array([scores[i] for i in axis], dtype=float), dims=("component",), coords=coords)


def _circuit_result(model: Model, prompts: PromptSet, ablator: CircuitScorer, sites: list[Site], effects: list[float],
                    ranked: list[int], grown: tuple[list[int], list[float], list[str]], *, target: float,
                    full: float, empty: float, tol: float, options: dict) -> CircuitResult:
    """The smallest prefix of the grown circuit that reaches ``target``, with its curve and checks."""
    order, curve, how = grown
    reached_at = next((k for k, f in enumerate(curve) if reaches(f, target, tol)), None)
    size = len(order) if reached_at is None else reached_at + 1
    members = [sites[i] for i in order[:size]]
    trivial = trivial_reason(members, sites)
    note = _note(curve, size, reached_at is not None, trivial, how[:size], full=full, empty=empty, target=target)
    n_kept, mib_f = score_curve(lambda c: ablator.keep_among(c, sites), sites, ranked, full=full, empty=empty)
    cpr, cmd = area_under_curve(MIB_FRACTIONS, mib_f)
    values = _component_axis(sites, effects, order + [i for i in ranked if i not in set(order)])
    faith = np.full(values.sizes["component"], np.nan)
    faith[:len(curve)] = curve
    in_circuit = np.zeros(values.sizes["component"], dtype=np.int64)
    in_circuit[:size] = 1
    return CircuitResult(
        values=values, meta=make_meta("discover_circuit", model, prompts, options=options,
                                            seed=options.get("seed")),
        extras={"faithfulness": values.copy(data=faith), "in_circuit": values.copy(data=in_circuit)},
        circuit=[str(x) for x in values.coords["component"].values[:size]], target=target,
        reached=reached_at is not None,
        circuit_faithfulness=None if not curve or np.isnan(curve[size - 1]) else float(curve[size - 1]),
        full_score=full, circuit_ablated_score=ablator.remove(members), empty_score=empty,
        trivial=bool(trivial), note=note, tolerance=tol, chosen_by=list(how[:size]),
        cpr=None if np.isnan(cpr) else cpr, cmd=None if np.isnan(cmd) else cmd,
        mib_faithfulness=[float(f) for f in mib_f], mib_n_kept=n_kept,
    )


def _note(curve: list[float], size: int, reached: bool, trivial: str, how: list[str], *, full: float, empty: float,
          target: float) -> str:
    """What a reader must know about the circuit, in words ("" when nothing)."""
    parts = []
    if full == empty:
        parts.append("faithfulness is undefined: the full model and the empty circuit score the same")
    elif not reached:
        best = np.nanmax(curve) if curve and np.isfinite(curve).any() else float("nan")
        parts.append(f"the target {target} was not reached (best F = {best:.4g}); the circuit is every component "
                     "added before growth stopped")
    if trivial:
        parts.append(trivial)
    if "pair" in how:
        parts.append("no single component raised F alone at some step: a pair was added (a conjunctive circuit)")
    if "block" in how:
        parts.append("neither a single component nor a pair raised F at some step: components were added in "
                     "rank order until F rose, then pruned (a conjunction of three or more)")
    return "; ".join(parts)


def _counterfactual_tokens(batch: PairBatch, prompts: PromptSet) -> torch.Tensor:
    """The corrupt sequences of ``batch``, row for row the scored prompts (counterfactual ablation)."""
    if batch.dataset_hash is not None and batch.dataset_hash != prompts.hash:
        raise MethodError("ablation='counterfactual' takes each prompt's activations from its pair's corrupt "
                          "prompt, so the scored prompts must be the pairs' clean prompts (pass prompts=None)")
    return batch.corrupt


def discover_circuit(
    model: Model,
    pairs: PromptPairs | PairBatch,
    prompts: PromptSet | None = None,
    *,
    components: Sequence[ComponentKind] = ("attn_head", "mlp_out"),
    score: Score = "patching",
    grow: Grow = "topk",
    target: float = 0.9,
    metric: FaithfulnessMetric = "nl",
    max_size: int | None = None,
    reference: PromptSet | None = None,
    score_metric: str = "logit_diff",
    direction: Direction = "denoise",
    answer: AnswerMode = "multi",
    answer_index: int | None = None,
    ablation: CircuitAblation = "mean",
    n_draws: int = 3,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    scores: ComponentScores | None = None,
) -> CircuitResult:
    """Find the smallest circuit whose mean-ablation faithfulness reaches ``target``.

    Args:
        model: the model.
        pairs: clean/corrupt pairs that score the components (or a tokenized batch).
        prompts: the prompts faithfulness is measured on (default: ``pairs.clean``).
        components: kinds to rank: ``attn_head`` (one per head), ``mlp_out`` (one per
            MLP), ``mlp_post`` (one per MLP neuron; not together with ``mlp_out``).
        score: ``"patching"`` (exact, one cell per component) or ``"attribution"`` (AtP).
        grow: ``"topk"`` (add components in score order, the curve over every size) or
            ``"greedy"`` (add the one that raises faithfulness most; stops at ``target``).
        target: the faithfulness to reach.
        metric: faithfulness metric: ``"nl"`` (Nikankin's correct / max logit),
            ``"logit_diff"`` or ``"accuracy"``.
        max_size: the largest circuit tried (default: every component).
        reference: prompts the ablation's means, resamples or optimal constants are taken
            over (default: ``prompts``).
        score_metric: the patching metric components are ranked by.
        direction: patching direction (the score is the absolute normalised effect).
        answer: ``"multi"`` (teacher-forced answer tokens) or ``"single"``.
        answer_index: score and measure faithfulness on this answer token only (0 = the
            first token written), e.g. one circuit per answer digit; default: all of them.
        ablation: what replaces a component outside the circuit (as in
            :func:`~arithinterp.methods.faithfulness.faithfulness`): ``"mean"``, ``"zero"``,
            ``"resample"`` (``n_draws`` seeded permutations of the reference, scores averaged),
            ``"counterfactual"`` (the pair's corrupt prompt; ``prompts`` must be the pairs'
            clean prompts) or ``"optimal"`` (Li & Janson's loss-minimising constants).
        n_draws: permutations averaged by ``ablation="resample"``.
        batch_size: prompts per forward pass of the faithfulness runs.
        seed: seed of the resample permutations.
        progress: show progress bars.
        scores: sweeps already run on ``pairs`` that rank some of ``components``, so they
            are not run again: a :class:`~arithinterp.methods.patching.PatchingResult`
            (``score="patching"``) or :class:`~arithinterp.methods.attribution.AttributionResult`
            (``score="attribution"``, ``method="atp"``) per kind, as one result, a sequence
            or a mapping ``{kind: result}``. Each must be the sweep discovery would run
            (``per_position=False``, ``normalize=True``, the same ``direction``,
            ``score_metric``, ``answer``, pairs and every component of its kind; ``n_boot``
            does not matter), else :class:`MethodError`; not with ``answer_index``.
    """
    components = list(components)
    _check(components, score, grow, target, metric, max_size)
    check_positive_int("batch_size", batch_size)
    check_ablation(ablation, n_draws=n_draws, reference_size=None if reference is None else len(reference))
    if prompts is None:
        if not isinstance(pairs, PromptPairs):
            raise ConfigError("pass `prompts` when `pairs` is an already tokenized PairBatch")
        prompts = pairs.clean
    batch = _scoring_batch(model, pairs, score=score, score_metric=score_metric, direction=direction,
                           answer=answer, answer_index=answer_index)
    given = _given_scores(model, scores, components, score=score, direction=direction, score_metric=score_metric,
                          answer=answer, answer_index=answer_index, batch=batch)
    ablator = CircuitScorer(model, prompts, reference, metric=metric, answer=answer, batch_size=batch_size,
                       answer_index=answer_index, ablation=ablation, n_draws=n_draws, seed=seed,
                       corrupt=_counterfactual_tokens(batch, prompts) if ablation == "counterfactual" else None,
                       neurons="mlp_post" in components)

    sites: list[Site] = []
    effects: list[float] = []
    score_tols: list[float] = []
    for kind in components:
        if kind in given:
            sweep = given[kind]
        else:
            sweep = _score_kind(model, batch, kind, score=score, direction=direction, score_metric=score_metric,
                                answer=answer, progress=progress)
        s, v = _component_effects(sweep, kind, score=score, direction=direction)
        score_tols.append(_score_tolerance(sweep, model.dtype))
        sites += s
        effects += v.tolist()
    ranked = rank_components(sites, effects, max(score_tols))
    limit = len(sites) if max_size is None else min(max_size, len(sites))
    full, empty = ablator.run_parts(None, None), ablator.keep([])
    tol = tie_tolerance(full, empty, model.dtype)
    grown = _grow(ablator, sites, ranked, grow=grow, limit=limit, target=target, full=full, empty=empty, tol=tol,
                  progress=progress)

    options = {"components": components, "score": score, "grow": grow, "target": float(target),
               "metric": metric, "ablation": ablation, "n_draws": ablator.values.n_draws, "seed": seed,
               "max_size": max_size, "score_metric": score_metric,
               "direction": direction, "answer": answer, "answer_index": answer_index,
               "n_pairs": len(batch), "n_prompts": int(ablator.seqs.shape[0]),
               "reference_hash": None if reference is None else reference.hash}
    return _circuit_result(model, prompts, ablator, sites, effects, ranked, grown, target=float(target),
                           full=full, empty=empty, tol=tol, options=options)


# -- registration ---------------------------------------------------------------------------------

#: Bootstrap resamples of the report's edge scores.
REPORT_EDGE_N_BOOT = 200


class CircuitOptions(Options):
    """Options of :func:`discover_circuit` (circuit discovery to a faithfulness target)."""

    components: list[ComponentKind] = Field(default_factory=lambda: ["attn_head", "mlp_out"], min_length=1)
    score: Score = "patching"
    grow: Grow = "topk"
    target: float = Field(0.9, gt=0)
    metric: FaithfulnessMetric = "nl"
    max_size: int | None = Field(None, ge=1)
    score_metric: Literal["logit_diff", "logprob", "prob"] = "logit_diff"
    direction: Direction = "denoise"
    answer: AnswerMode = "multi"
    ablation: CircuitAblation = "mean"
    n_draws: int = Field(3, ge=1)
    batch_size: int = Field(64, ge=1)


def _report_circuit(ctx: RunContext) -> dict:
    from arithinterp.methods.edge_attribution import edge_attribution_patch

    batch = ctx.batch(ctx.answer)
    heads = ctx.results.get("patching_heads")  # the report's head sweep is the one discovery ranks heads by
    circuit = discover_circuit(ctx.model, batch, ctx.prompts, target=float(ctx.params.get("target", 0.9)),
                               ablation=ctx.params.get("ablation", "mean"), seed=ctx.seed, answer=ctx.answer, progress=ctx.progress, scores=[heads] if heads is not None else None)
    edges = edge_attribution_patch(ctx.model, ctx.batch(ctx.answer), answer=ctx.answer, n_boot=REPORT_EDGE_N_BOOT,
                                   seed=ctx.seed, progress=ctx.progress, executor=ctx.executor)
    return {"circuit": circuit, "circuit_edges": edges}


def _read_in_circuit(result: CircuitResult, sites: list[Site]) -> np.ndarray:
    """Whether each head / neuron is a member. Neurons are marked only when the circuit is at
    neuron level (it has ``mlp_post`` members); a circuit of whole MLPs says nothing about single
    neurons, so they get ``None`` (the report names the member MLPs instead)."""
    members = set(result.circuit)
    neuron_level = any(Site.from_label(m).kind == "mlp_post" for m in members)
    out = np.array([s.label in members for s in sites], dtype=object)
    if not neuron_level:
        out[[s.neuron is not None for s in sites]] = None
    return out


register(MethodSpec(
    name="circuit", function=discover_circuit, inputs="pairs", result=CircuitResult, options=CircuitOptions,
    check=check_pairs,
    report=ReportView(
        run=_report_circuit,
        results=("circuit", "circuit_edges"),
        columns=ReportColumn.pair("in_circuit", "circuit", "circuit", _read_in_circuit,
                                  "member of the circuit (neurons: only in a neuron-level circuit)",
                                  missing=None),
        order=90,
    ),
))
