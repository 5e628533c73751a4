"""Circuit scoring as MIB does it (Mueller et al., ICML 2025): faithfulness curves, CPR and CMD.

A method ranks components (or edges) by importance. MIB keeps the top ``k`` of ``n`` scored items
for each fraction ``k/n`` in :data:`MIB_FRACTIONS` (0.1 %, 0.2 %, 0.5 %, 1 %, 2 %, 5 %, 10 %, 20 %,
50 %, 100 %; ``k = int(fraction * n)``, so a small model keeps nothing at the small fractions),
ablates everything else and measures

    f(C) = (m(C) − m(∅)) / (m(M) − m(∅))

with m the metric, M the full model and ∅ everything ablated. Ranking is by ``|score|`` (MIB's
``absolute=True``). :func:`area_under_curve` integrates the curve exactly as MIB's
``evaluate_area_under_curve`` (``log_scale=False``): trapezoids over the fractions themselves,

    CPR = Σ_i (x_{i+1} − x_i) (f_i + f_{i+1}) / 2           (higher is better; can exceed 1)
    CMD = Σ_i (x_{i+1} − x_i) (|1 − f_i| + |1 − f_{i+1}|) / 2 (lower is better; 0 = faithful everywhere)

so both are over x from 0.001 to 1: a perfect curve (f = 1 at every fraction) has CPR 0.999 and
CMD 0. :func:`mib_curve` scores any ranking or score vector of components; discovery reports the
CPR / CMD of its own ranking (``CircuitResult.cpr`` / ``.cmd``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from arithinterp.errors import MethodError
from arithinterp.methods._common import make_meta
from arithinterp.methods.circuit_ablation import CircuitAblation, check_ablation
from arithinterp.methods.circuit_growth import rank_components, tie_tolerance
from arithinterp.methods.faithfulness import FAITHFULNESS_METRICS, CircuitScorer, FaithfulnessMetric
from arithinterp.models import Model, Site
from arithinterp.results import Result, resultclass
from arithinterp.results.io import atomic_write_json
from arithinterp.tasks import PromptPairs, PromptSet

__all__ = ["MIB_FRACTIONS", "MIB_RECEIVERS", "MIBCurveResult", "area_under_curve", "curve_points",
           "export_mib_graph", "mib_curve", "mib_edge_count", "to_mib_graph"]

#: MIB's fractions of items kept (``evaluate_area_under_curve``'s ``percentages``).
MIB_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

ComponentRanking = Mapping[str, float] | Sequence[str] | xr.DataArray
"""Scores by component label (``{"L0H1": 0.3, "MLP0": 1.2}``, or a DataArray with a ``component``
dim), or a ranking: labels, most important first."""


def area_under_curve(fractions: Sequence[float], faithfulness: Sequence[float]) -> tuple[float, float]:
    """``(CPR, CMD)`` of a faithfulness curve, integrated as MIB does (module doc)."""
    x, f = np.asarray(fractions, dtype=float), np.asarray(faithfulness, dtype=float)
    if x.shape != f.shape or x.ndim != 1 or len(x) < 2:
        raise MethodError(f"a curve needs >= 2 points and one faithfulness per fraction; got {x.shape} / {f.shape}")
    if np.any(np.diff(x) <= 0):
        raise MethodError(f"fractions must be strictly increasing, got {list(x)}")
    dx = np.diff(x)
    cpr = float(np.sum(dx * (f[:-1] + f[1:]) / 2))
    cmd = float(np.sum(dx * (np.abs(1 - f[:-1]) + np.abs(1 - f[1:])) / 2))
    return cpr, cmd


def curve_points(n_items: int, fractions: Sequence[float] = MIB_FRACTIONS) -> list[int]:
    """How many items MIB keeps at each fraction: ``int(fraction * n_items)``."""
    return [int(fr * n_items) for fr in fractions]


@resultclass
class MIBCurveResult(Result):
    """A faithfulness curve over MIB's fractions of kept items, with its CPR and CMD.

    ``values``: dim ``fraction`` (the fraction of items kept), ``f`` at each; coordinate
    ``n_kept`` (how many items that is). Fields: ``cpr``, ``cmd``, ``level`` (``component`` or
    ``edge``), ``n_items``, ``full_score`` (m(M)), ``empty_score`` (m(∅)), ``ranking`` (the items,
    most important first).
    """

    cpr: float
    cmd: float
    level: str = "component"
    n_items: int = 0
    full_score: float | None = None
    empty_score: float | None = None
    ranking: list[str] | None = None

    metric_name = "faithfulness"

    def plot(self) -> go.Figure:
        frame = self.to_frame()
        fig = go.Figure(go.Scatter(x=frame["fraction"] * 100, y=frame[self.metric], mode="lines+markers",
                                   fill="tozeroy", name="f(k)", text=frame.get("n_kept"),
                                   hovertemplate="%{x}% (%{text} kept)<br>f %{y:.3f}<extra></extra>"))
        fig.add_hline(y=1.0, line_dash="dash")
        fig.update_layout(title=f"MIB faithfulness curve ({self.level}s): CPR {self.cpr:.3f}, CMD {self.cmd:.3f}",
                          xaxis_title=f"% of {self.level}s kept", yaxis_title="faithfulness f", xaxis_type="log")
        return fig

    @classmethod
    def example(cls) -> MIBCurveResult:
        f = np.array([0, 0, 0, 0, 0, 0.2, 0.5, 0.9, 1.0, 1.0])
        values = xr.DataArray(f, dims=("fraction",), coords={"fraction": np.array(MIB_FRACTIONS),
                                                             "n_kept": ("fraction", np.array(curve_points(20)))})
        cpr, cmd = area_under_curve(MIB_FRACTIONS, f)
        meta = make_meta("mib_curve", None, options={"ablation": "counterfactual", "metric": "logit_diff"})
        return cls(values=values, meta=meta, cpr=cpr, cmd=cmd, n_items=20, full_score=2.0, empty_score=0.0)


def _ranking(scores: ComponentRanking, absolute: bool) -> tuple[list[Site], list[float]]:
    """Sites and their ranking scores (a ranking of labels gets decreasing scores)."""
    if isinstance(scores, xr.DataArray):
        if scores.ndim != 1:
            raise MethodError(f"scores must be 1-D over components, got dims {scores.dims}")
        labels = [str(x) for x in scores.coords[scores.dims[0]].values]
        values = [float(v) for v in np.asarray(scores.values, dtype=float)]
    elif isinstance(scores, Mapping):
        labels, values = [str(k) for k in scores], [float(v) for v in scores.values()]
    elif isinstance(scores, Sequence) and not isinstance(scores, str):
        labels = [str(x) for x in scores]
        values = [float(len(labels) - i) for i in range(len(labels))]
    else:
        raise MethodError(f"scores must be a mapping label -> score, a ranking of labels or a DataArray; "
                          f"got {type(scores).__name__}")
    if not labels:
        raise MethodError("scores name no component")
    if len(set(labels)) != len(labels):
        raise MethodError("scores name a component twice")
    if any(not np.isfinite(v) for v in values):
        raise MethodError("scores must be finite (rank unscored components last with 0)")
    sites = [Site.from_label(label) for label in labels]
    return sites, [abs(v) if absolute else v for v in values]


def score_curve(keep: Callable[[list[Site]], float], sites: list[Site], ranked: list[int], *, full: float,
                empty: float, fractions: Sequence[float] = MIB_FRACTIONS) -> tuple[list[int], list[float]]:
    """``n_kept`` and f at each fraction, keeping the top of ``ranked`` (one run per distinct size)."""
    counts = curve_points(len(ranked), fractions)
    seen: dict[int, float] = {}
    span = full - empty
    for k in counts:
        if k not in seen:
            seen[k] = float("nan") if span == 0 else (keep([sites[i] for i in ranked[:k]]) - empty) / span
    return counts, [seen[k] for k in counts]


def mib_curve(
    model: Model,
    pairs: PromptPairs,
    scores: ComponentRanking,
    *,
    ablation: CircuitAblation = "counterfactual",
    metric: FaithfulnessMetric = "logit_diff",
    answer: Literal["multi", "single"] = "multi",
    absolute: bool = True,
    fractions: Sequence[float] = MIB_FRACTIONS,
    reference: PromptSet | None = None,
    n_draws: int = 3,
    batch_size: int = 64,
    seed: int = 0,
) -> MIBCurveResult:
    """MIB's faithfulness curve, CPR and CMD of a component ranking (module doc).

    Args:
        model: the model.
        pairs: clean/corrupt pairs; f is measured on the clean prompts.
        scores: importance by component label (heads ``L0H1``, MLPs ``MLP0``, neurons
            ``L0N17``), or a ranking of labels. The scored components are the items; a
            component the scores do not name is never ablated.
        ablation: what replaces an item outside the circuit (default: MIB's counterfactual
            patching, from the pair's corrupt prompt; see ``docs/methods/circuits.md``).
        metric: ``"logit_diff"`` (correct answer minus the largest other logit), ``"nl"``
            or ``"accuracy"``, as :func:`~arithinterp.methods.faithfulness.faithfulness`.
        answer: ``"multi"`` (teacher-forced answer tokens) or ``"single"``.
        absolute: rank by ``|score|`` (MIB's default) or by the signed score.
        fractions: fractions of items kept (MIB's ten by default); strictly increasing in (0, 1].
        reference: prompts of the mean / resample / optimal ablations (default: the clean prompts).
        n_draws: permutations averaged by ``ablation="resample"``.
        batch_size: prompts per forward pass.
        seed: seed of the resample permutations.

    Ties among scores (within a tolerance of the largest score's float error) are broken by
    model order, as in discovery (:mod:`arithinterp.methods.circuit_growth`).
    """
    if metric not in FAITHFULNESS_METRICS:
        raise MethodError(f"unknown metric {metric!r}; valid: {', '.join(FAITHFULNESS_METRICS)}")
    if not isinstance(pairs, PromptPairs):
        raise MethodError(f"mib_curve measures faithfulness on clean/corrupt pairs; got {type(pairs).__name__}")
    check_ablation(ablation, n_draws=n_draws, reference_size=None if reference is None else len(reference))
    fr = [float(x) for x in fractions]
    if not fr or any(not 0 < x <= 1 for x in fr) or any(b <= a for a, b in zip(fr, fr[1:])):
        raise MethodError(f"fractions must be strictly increasing in (0, 1], got {fr}")
    sites, values = _ranking(scores, absolute)
    model.validate(sites)
    top = max((abs(v) for v in values), default=0.0)
    ranked = rank_components(sites, values, tie_tolerance(top, 0.0, model.dtype) if top else 0.0)
    corrupt = None
    if ablation == "counterfactual":
        from arithinterp.methods.metrics import tokenize_pairs

        corrupt = tokenize_pairs(pairs, model.tokenizer, answer=answer).corrupt
    scorer = CircuitScorer(model, pairs.clean, reference, metric=metric, answer=answer, batch_size=batch_size,
                           ablation=ablation, n_draws=n_draws, seed=seed, corrupt=corrupt,
                           neurons=any(s.kind == "mlp_post" for s in sites))
    full, empty = scorer.run_parts(None, None), _keep_only_unscored(scorer, sites)
    counts, curve = score_curve(lambda c: scorer.keep_among(c, sites), sites, ranked, full=full, empty=empty,
                                fractions=fr)
    cpr, cmd = area_under_curve(fr, curve) if len(fr) >= 2 else (float("nan"), float("nan"))
    values_da = xr.DataArray(np.array(curve), dims=("fraction",),
                             coords={"fraction": np.array(fr), "n_kept": ("fraction", np.array(counts))})
    meta = make_meta("mib_curve", model, pairs.clean, seed=seed,
                     options={"ablation": ablation, "metric": metric, "answer": answer, "absolute": absolute,
                              "n_draws": scorer.values.n_draws, "level": "component", "n_pairs": len(pairs),
                              "reference_hash": None if reference is None else reference.hash})
    return MIBCurveResult(values=values_da, meta=meta, cpr=cpr, cmd=cmd, level="component", n_items=len(sites),
                          full_score=full, empty_score=empty, ranking=[sites[i].label for i in ranked])


def _keep_only_unscored(scorer: CircuitScorer, sites: list[Site]) -> float:
    """m(∅): every scored item ablated, every unscored component kept."""
    return scorer.keep_among([], sites)


# ---- MIB's submission layout of edge scores ------------------------------------------------------

#: The receivers an MIB graph has: every head's q / k / v input, every MLP and the logits.
MIB_RECEIVERS: tuple[str, ...] = ("q", "k", "v", "mlp_in", "logits")


def _mib_node(label: str) -> str:
    """Our component label as MIB's node name: ``input``, ``a{l}.h{h}``, ``m{l}``, ``logits``."""
    if label in ("embed", "logits"):
        return "input" if label == "embed" else "logits"
    site = Site.from_label(label)
    if site.kind == "attn_head":
        return f"a{site.layer}.h{site.head}"
    if site.kind == "mlp_out":
        return f"m{site.layer}"
    if site.kind in ("q", "k", "v"):
        return f"a{site.layer}.h{site.head}<{site.kind}>"
    raise MethodError(f"{label!r} has no MIB node name")


def mib_edge_count(n_layers: int, n_heads: int) -> int:
    """How many edges MIB's graph of a sequential model has (GPT-2 small: 32491)."""
    total = n_layers * (3 * n_heads + 1) + 1  # from the input: every receiver
    for layer in range(n_layers):
        later = n_layers - layer - 1  # layers strictly after this one
        total += n_heads * (3 * n_heads * later + later + 2)  # a head: later q/k/v and MLPs, its own MLP, logits
        total += 3 * n_heads * later + later + 1  # the MLP: later q/k/v and MLPs, logits
    return total


def to_mib_graph(edges: Result, *, top_n: int | None = None, absolute: bool = True) -> dict:
    """An :class:`~arithinterp.methods.edge_attribution.EdgeAttributionResult` in MIB's graph
    layout (EAP-IG's ``Graph.to_json``): ``{"cfg", "nodes": {name: in_graph}, "edges": {"a0.h1->
    a1.h0<q>": {"score", "in_graph"}}}``. It must score every sender (``embed``, ``attn_head``,
    ``mlp_out``) into every receiver MIB has (per-head ``q`` / ``k`` / ``v``, ``mlp_in``,
    ``logits``). ``top_n``: mark only the top ``n`` edges by ``|score|`` (else every edge) and the
    nodes they touch as ``in_graph``; MIB's evaluation re-selects its own top edges from the scores.
    """
    opts = edges.meta.options
    if set(opts.get("senders", ())) != {"embed", "attn_head", "mlp_out"} or \
            not set(MIB_RECEIVERS) <= set(opts.get("receivers", ())):
        raise MethodError("an MIB graph needs every edge: edge_attribution_patch(..., senders=('embed', "
                          "'attn_head', 'mlp_out'), receivers=('q', 'k', 'v', 'mlp_in', 'logits'))")
    v = edges.values
    scores: dict[str, float] = {}
    for sender in v.coords["component"].values:
        for receiver in v.coords["site"].values:
            if str(receiver).startswith("ATTN"):
                continue  # a whole attention block: MIB has per-head receivers instead
            value = float(v.sel(component=sender, site=receiver))
            if np.isfinite(value):
                scores[f"{_mib_node(str(sender))}->{_mib_node(str(receiver))}"] = value
    order = sorted(scores, key=lambda k: -abs(scores[k]) if absolute else -scores[k])
    kept = set(order if top_n is None else order[:top_n])
    nodes = {"input": False, "logits": False}
    layers = sorted({int(c) for c in v.coords["comp_layer"].values if int(c) >= 0})
    heads = sorted({int(c) for c in v.coords["comp_head"].values if int(c) >= 0})
    for layer in layers:
        nodes.update({f"a{layer}.h{h}": False for h in heads})
        nodes[f"m{layer}"] = False
    for name in kept:
        parent, child = name.split("->")
        nodes[parent] = True
        nodes[child.split("<")[0]] = True
    cfg = {"n_layers": len(layers), "n_heads": len(heads), "parallel_attn_mlp": False, "model": edges.meta.model}
    return {"cfg": cfg, "nodes": nodes,
            "edges": {k: {"score": scores[k], "in_graph": k in kept} for k in scores}}


def export_mib_graph(edges: Result, path: str | os.PathLike[str], *, top_n: int | None = None,
                     absolute: bool = True) -> Path:
    """Write :func:`to_mib_graph` as JSON at ``path`` (atomically); returns the path."""
    return atomic_write_json(path, to_mib_graph(edges, top_n=top_n, absolute=absolute), indent=None)
