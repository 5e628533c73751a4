"""Circuit discovery: rank components, grow a circuit until it is faithful.

:func:`discover_circuit` scores every component (attention heads, whole MLPs
or single MLP neurons) by its normalised patching effect — exact
(:func:`~arithinterp.methods.patching.patch_activations`, all positions at
once) or approximated by gradients
(:func:`~arithinterp.methods.attribution.attribution_patch`) — then grows a
circuit either in rank order (``"topk"``) or greedily (``"greedy"``: at each
step add the component that raises faithfulness most). Faithfulness is
Nikankin et al.'s mean-ablation score (see
:func:`~arithinterp.methods.ablation.faithfulness`): everything outside the
circuit is replaced by its per-position mean over the reference prompts.
The smallest circuit that reaches ``target`` is returned with the whole
faithfulness-vs-size curve and a completeness check (the full model with
only the circuit mean-ablated should lose most of its score).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import plotly.graph_objects as go
import torch
import xarray as xr
from tqdm.auto import tqdm

from arithinterp.errors import ConfigError
from arithinterp.methods._common import make_meta
from arithinterp.methods.ablation import (
    FAITHFULNESS_METRICS,
    FaithfulnessMetric,
    _ablation_patches,
    _check_reference,
    _circuit_parts,
    _faithfulness_ratio,
    _faithfulness_scores,
    site_means,
)
from arithinterp.methods.attribution import attribution_patch
from arithinterp.methods.metrics import AnswerMode, PairBatch, tokenize_pairs
from arithinterp.methods.patching import Direction, patch_activations
from arithinterp.models import Model, Patch, Site
from arithinterp.results import Result, resultclass
from arithinterp.tasks import PromptPairs, PromptSet, tokenize

__all__ = ["CircuitResult", "circuit_figure", "discover_circuit"]

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
    ``empty_score`` (everything mean-ablated).
    """

    circuit: list[str]
    target: float
    reached: bool
    circuit_faithfulness: float | None = None
    full_score: float | None = None
    circuit_ablated_score: float | None = None
    empty_score: float | None = None

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


def _score_kind(model: Model, batch: PairBatch, kind: str, *, score: Score, direction: Direction,
                score_metric: str, progress: bool) -> tuple[list[Site], np.ndarray]:
    """Sites of one component kind (all positions at once) and their absolute normalised effect."""
    common = dict(kind=kind, per_position=False, direction=direction, metric=score_metric,
                  normalize=True, n_boot=1, progress=progress)
    if score == "patching":
        values = patch_activations(model, batch, **common).values
        effect = values if direction == "denoise" else 1.0 - values
    else:
        effect = attribution_patch(model, batch, **common).effect
        effect = effect if direction == "denoise" else -effect
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


# ---- mean-ablation scoring, means computed once -------------------------------------------


class _Ablator:
    """Scores prompts with chosen components mean-ablated (means over the reference, once)."""

    def __init__(self, model: Model, prompts: PromptSet, reference: PromptSet | None, *,
                 metric: str, answer: AnswerMode, batch_size: int, answer_index: int | None = None) -> None:
        self.model, self.metric, self.batch_size = model, metric, batch_size
        tok = tokenize(prompts, model.tokenizer, answer=answer)
        self.answers, self.positions = tok.answer_tokens, tok.answer_positions
        if answer_index is not None:
            self.answers = self.answers[:, answer_index:answer_index + 1]
            self.positions = self.positions[answer_index:answer_index + 1]
        self.seqs = tok.prompt_tokens if answer == "single" else tok.tokens[:, :-1]
        if reference is None:
            ref = self.seqs
        elif answer == "single":
            ref = model.to_tokens(list(reference.prompts)).cpu()
        else:
            ref = tokenize(reference, model.tokenizer, answer="multi").tokens[:, :-1]
        _check_reference(self.seqs, ref)
        n_layers = model.shape.n_layers
        needed = [Site(k, layer) for layer in range(n_layers)
                  for k in ("attn_out", "mlp_out", "attn_head", "mlp_post")]
        self.means = site_means(model, needed, ref.to(model.device), batch_size=batch_size)

    def run(self, patches: dict[Site, Patch]) -> float:
        out = []
        for start in range(0, self.seqs.shape[0], self.batch_size):
            logits = self.model.run_with_patches(self.seqs[start:start + self.batch_size].to(self.model.device),
                                                 patches)
            answers = self.answers[start:start + self.batch_size].to(self.model.device)
            out.append(_faithfulness_scores(logits[:, self.positions], answers, self.metric).cpu())
        return float(torch.cat(out).mean())

    def keep(self, circuit: Sequence[Site]) -> float:
        """The score with everything outside ``circuit`` mean-ablated."""
        heads, mlps = _circuit_parts(self.model, circuit)
        return self.run(_ablation_patches(self.model, heads, mlps, self.means))

    def remove(self, circuit: Sequence[Site]) -> float:
        """The score with only ``circuit`` mean-ablated (the completeness check)."""
        shape = self.model.shape
        heads, mlps = _circuit_parts(self.model, circuit)
        all_heads = set(range(shape.n_heads))
        keep_heads = [all_heads - h for h in heads]
        keep_mlps: list[set[int] | None] = []
        for kept in mlps:
            if kept is None:
                keep_mlps.append(set())  # the whole MLP is in the circuit: ablate it
            elif not kept:
                keep_mlps.append(None)  # untouched
            else:
                keep_mlps.append(set(range(shape.d_mlp)) - kept)
        # A layer whose every head is in the circuit keeps none: _ablation_patches then
        # ablates the whole attention output, which is the same thing.
        return self.run(_ablation_patches(self.model, keep_heads, keep_mlps, self.means))


# ---- discovery ----------------------------------------------------------------------------


def _check(components: Sequence[str], score: str, grow: str, target: float, metric: str,
           max_size: int | None, direction: str) -> None:
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
    if direction not in ("denoise", "noise"):
        raise ConfigError(f"direction must be 'denoise' or 'noise', got {direction!r}")


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
    batch_size: int = 64,
    progress: bool = True,
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
        reference: prompts the ablation means are taken over (default: ``prompts``).
        score_metric: the patching metric components are ranked by.
        direction: patching direction (the score is the absolute normalised effect).
        answer: ``"multi"`` (teacher-forced answer tokens) or ``"single"``.
        answer_index: score and measure faithfulness on this answer token only (0 = the
            first token written), e.g. one circuit per answer digit; default: all of them.
        batch_size: prompts per forward pass of the faithfulness runs.
        progress: show progress bars.
    """
    components = list(components)
    _check(components, score, grow, target, metric, max_size, direction)
    if prompts is None:
        if not isinstance(pairs, PromptPairs):
            raise ConfigError("pass `prompts` when `pairs` is an already tokenized PairBatch")
        prompts = pairs.clean
    batch = pairs if isinstance(pairs, PairBatch) else tokenize_pairs(pairs, model.tokenizer, answer=answer)
    if answer_index is not None:
        n_answer = int(batch.answer_positions.shape[0])
        if isinstance(answer_index, bool) or not isinstance(answer_index, int) or not 0 <= answer_index < n_answer:
            raise ConfigError(f"answer_index must be an int in 0..{n_answer - 1} (the answer has {n_answer} "
                              f"tokens), got {answer_index!r}")
        i = slice(answer_index, answer_index + 1)
        batch = PairBatch(batch.clean, batch.corrupt, batch.clean_answer[:, i], batch.corrupt_answer[:, i],
                          batch.answer_positions[i], batch.str_tokens)
    ablator = _Ablator(model, prompts, reference, metric=metric, answer=answer, batch_size=batch_size,
                       answer_index=answer_index)

    sites: list[Site] = []
    scores: list[float] = []
    for kind in components:
        s, v = _score_kind(model, batch, kind, score=score, direction=direction,
                           score_metric=score_metric, progress=progress)
        sites += s
        scores += v.tolist()
    ranked = sorted(range(len(sites)), key=lambda i: (-scores[i], i))
    limit = len(sites) if max_size is None else min(max_size, len(sites))

    full, empty = ablator.run({}), ablator.keep([])

    def f_of(circuit: Sequence[Site]) -> float:
        ratio = _faithfulness_ratio(np.array([ablator.keep(circuit)]), np.array([full]), np.array([empty]))
        return float("nan") if ratio is None else ratio

    order: list[int] = []
    curve: list[float] = []
    bar = tqdm(total=limit, desc=f"growing circuit ({grow})", disable=not progress, leave=False)
    if grow == "topk":
        for i in ranked[:limit]:
            order.append(i)
            curve.append(f_of([sites[j] for j in order]))
            bar.update(1)
    else:
        remaining = list(ranked)
        while remaining and len(order) < limit:
            base = [sites[j] for j in order]
            trial = [f_of([*base, sites[i]]) for i in remaining]
            # Ties (and NaN) go to the better-scored component.
            best = max(range(len(remaining)), key=lambda k: (np.nan_to_num(trial[k], nan=-np.inf), -k))
            order.append(remaining.pop(best))
            curve.append(trial[best])
            bar.update(1)
            if trial[best] >= target:
                break
    bar.close()

    reached_at = next((k for k, f in enumerate(curve) if f >= target), None)
    size = len(order) if reached_at is None else reached_at + 1
    circuit = [sites[i] for i in order[:size]]
    axis = order + [i for i in ranked if i not in set(order)]
    labels = np.array([sites[i].label for i in axis])
    coords = {
        "component": labels,
        "kind": ("component", np.array([sites[i].kind for i in axis])),
        "comp_layer": ("component", np.array([int(sites[i].layer) for i in axis])),
        "comp_head": ("component", np.array([-1 if sites[i].head is None else sites[i].head for i in axis])),
        "comp_neuron": ("component", np.array([-1 if sites[i].neuron is None else sites[i].neuron
                                               for i in axis])),
    }
    values = xr.DataArray(np.array([scores[i] for i in axis], dtype=float), dims=("component",), coords=coords)
    faith = np.full(len(axis), np.nan)
    faith[:len(curve)] = curve
    in_circuit = np.zeros(len(axis), dtype=np.int64)
    in_circuit[:size] = 1
    meta = make_meta(
        "discover_circuit", model, prompts,
        options={"components": components, "score": score, "grow": grow, "target": float(target),
                 "metric": metric, "max_size": max_size, "score_metric": score_metric,
                 "direction": direction, "answer": answer, "answer_index": answer_index,
                 "n_pairs": len(batch),
                 "n_prompts": int(ablator.seqs.shape[0]),
                 "reference_hash": None if reference is None else reference.hash},
    )
    return CircuitResult(
        values=values, meta=meta,
        extras={"faithfulness": values.copy(data=faith), "in_circuit": values.copy(data=in_circuit)},
        circuit=[str(x) for x in labels[:size]], target=float(target), reached=reached_at is not None,
        circuit_faithfulness=None if not curve or np.isnan(curve[size - 1]) else float(curve[size - 1]),
        full_score=full, circuit_ablated_score=ablator.remove(circuit), empty_score=empty,
    )


# ---- circuit diagram ----------------------------------------------------------------------


def _stage(kind: str, layer: int) -> int:
    """Forward-pass order: attention of layer L, then its MLP."""
    return 2 * layer + (0 if kind == "attn_head" else 1)


def _edge_node(label: str, *, receiving: bool = False) -> str:
    """The edge-graph node of a circuit member: a neuron is its MLP, a head receives through ``ATTN``."""
    site = Site.from_label(label)
    if site.kind == "mlp_post" or (site.kind == "attn_head" and receiving):
        return Site("mlp_out" if site.kind == "mlp_post" else "attn_out", site.layer).label
    return label


def _edge_scores(edges: Result, nodes: list[tuple[str, int, float, str]]) -> list[tuple[str, str, float]]:
    """Edges between circuit members (and into the logits) with their EAP score.

    A head receives through its layer's attention block (``ATTN{l}``), an MLP through
    ``MLP{l}``; a neuron's edges are its MLP's.
    """
    v = edges.values
    senders = {str(c) for c in v.coords["component"].values}
    receivers = {str(c) for c in v.coords["site"].values}
    out = []
    for u in nodes:
        sender = _edge_node(u[0])
        if sender not in senders:
            continue
        for w in nodes:
            if w[1] <= u[1]:
                continue
            receiver = _edge_node(w[0], receiving=True)
            if receiver in receivers:
                score = float(v.sel(component=sender, site=receiver))
                if np.isfinite(score):
                    out.append((u[0], w[0], score))
        if "logits" in receivers:
            score = float(v.sel(component=sender, site="logits"))
            if np.isfinite(score):
                out.append((u[0], "logits", score))
    return out


def circuit_figure(result: CircuitResult, edges: Result | None = None) -> go.Figure:
    """The circuit as a diagram: layers left to right (attention, then MLP, per layer),
    components as nodes sized by score.

    Without ``edges``, components of consecutive occupied stages are joined by edges
    weighted by the geometric mean of their scores. With ``edges`` (an
    :class:`~arithinterp.methods.edge_attribution.EdgeAttributionResult` of the same
    model), every edge from a member to a later member, and to a ``logits`` node,
    carries its edge-attribution score: width by ``|score|``, colour by sign, the
    score on hover and at the edge's midpoint.
    """
    v = result.values
    labels = [str(x) for x in v.coords["component"].values]
    member = {str(c) for c in result.circuit}
    nodes = []
    for i, label in enumerate(labels):
        if label not in member:
            continue
        kind, layer = str(v.coords["kind"].values[i]), int(v.coords["comp_layer"].values[i])
        nodes.append((label, _stage(kind, layer), float(v.values[i]), kind))
    stages = sorted({n[1] for n in nodes})
    by_stage = {s: [n for n in nodes if n[1] == s] for s in stages}
    pos = {}
    for s, group in by_stage.items():
        for j, n in enumerate(sorted(group)):
            pos[n[0]] = (s / 2.0, j - (len(group) - 1) / 2.0)
    top = max([n[2] for n in nodes] + [1e-12])
    fig = go.Figure()
    if edges is not None:
        scored = _edge_scores(edges, nodes)
        last = (max(stages) + 1) / 2.0 if stages else 0.0
        pos["logits"] = (max(last, (2 * int(edges.values.coords["site_layer"].values.max())) / 2.0), 0.0)
        biggest = max([abs(e[2]) for e in scored] + [1e-12])
        mid_x, mid_y, mid_text = [], [], []
        for a, b, score in scored:
            (x0, y0), (x1, y1) = pos[a], pos[b]
            color = "rgba(31,119,180,0.6)" if score >= 0 else "rgba(214,39,40,0.6)"
            fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", showlegend=False,
                                     line={"width": 1 + 8 * abs(score) / biggest, "color": color},
                                     hoverinfo="text", text=f"{a} → {b}: EAP {score:+.3f}"))
            mid_x.append((x0 + x1) / 2)
            mid_y.append((y0 + y1) / 2)
            mid_text.append(f"{score:+.2f}")
        fig.add_trace(go.Scatter(x=mid_x, y=mid_y, mode="text", text=mid_text, showlegend=False,
                                 hoverinfo="skip", textfont={"size": 10}))
        fig.add_trace(go.Scatter(x=[pos["logits"][0]], y=[0.0], mode="markers+text", text=["logits"],
                                 textposition="top center", showlegend=False,
                                 marker={"size": 14, "color": "#2ca02c", "symbol": "square"},
                                 hoverinfo="text"))
    else:
        for a, b in zip(stages, stages[1:]):
            for na in by_stage[a]:
                for nb in by_stage[b]:
                    w = float(np.sqrt(max(na[2], 0.0) * max(nb[2], 0.0))) / top
                    (x0, y0), (x1, y1) = pos[na[0]], pos[nb[0]]
                    fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", showlegend=False,
                                             line={"width": 1 + 6 * w, "color": "rgba(100,100,100,0.5)"},
                                             hoverinfo="text", text=f"{na[0]} → {nb[0]} ({w:.2f})"))
    fig.add_trace(go.Scatter(
        x=[pos[n[0]][0] for n in nodes], y=[pos[n[0]][1] for n in nodes], mode="markers+text",
        text=[n[0] for n in nodes], textposition="top center", showlegend=False,
        marker={"size": [12 + 28 * n[2] / top for n in nodes],
                "color": ["#1f77b4" if n[3] == "attn_head" else "#ff7f0e" for n in nodes]},
        hovertemplate="%{text}<br>score %{customdata:.3f}<extra></extra>",
        customdata=[n[2] for n in nodes],
    ))
    f = result.circuit_faithfulness
    fig.update_layout(title=f"circuit: {len(nodes)} components, faithfulness "
                            f"{'undefined' if f is None else f'{f:.3f}'}",
                      xaxis_title="layer (attention, then MLP at +0.5)", yaxis={"visible": False})
    return fig
