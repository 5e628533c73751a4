"""Neuron heuristics (Nikankin et al., ICLR 2025): K / KV maps, classification, knockouts.

A neuron's *K map* is its activation at the last position over every problem of
the operand grid; its *KV map* multiplies that by the neuron's direct vote for
the true result, ``(W_out[n] @ W_U)[token(result)]``. The grid holds the task's
valid problems only (:func:`~arithinterp.methods.grid.valid_cells`: no division
by 0, no negative difference for a task without one, no result above
``max_result``); the other cells are not prompts of the maps at all, so they
never count. A heuristic ``H`` (result in a range, operand in a range, result /
operand ``≡ m (mod n)``, a digit pattern, identical operands, a few results for
÷: :mod:`~arithinterp.methods.heuristic_families`, per operator) is a set of
problems; a neuron's score is the share of its top-``k`` problems that lie in
``H`` (``k = |H|`` unless the operator caps it; result heuristics on the KV
map, operand heuristics on the K map: the paper's "HYBRID"), and it implements
``H`` when the score is at least ``t = 0.6``. Ties in a map (a ReLU neuron is 0
on many prompts) are broken at random in expectation, so a silent neuron scores
``|H| / |grid|``, not whatever a stable sort puts first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import plotly.graph_objects as go
import torch
import xarray as xr
from pydantic import Field, field_validator

from arithinterp.errors import ArithInterpError, MethodError, SiteError
from arithinterp.methods._common import make_meta
from arithinterp.methods.circuit_ablation import resample_draws
from arithinterp.methods.grid import grid_activations, operand_grid, report_grid_spec, valid_cells
from arithinterp.methods.heuristic_families import (
    Heuristic,
    MapKind,
    heuristics,
    multi_result_heuristics,
    topk_overlap,
)
from arithinterp.methods.registry import (
    MethodSpec,
    NotApplicable,
    Options,
    ReportColumn,
    ReportView,
    RunContext,
    check_layer,
    register,
)
from arithinterp.models import Model, Site
from arithinterp.results import Result, ScalarTable, resultclass
from arithinterp.tasks import TaskSpec

__all__ = ["Heuristic", "HeuristicResult", "NeuronMaps", "classify_neurons", "find_heuristics", "heuristic_knockout",
           "heuristics", "neuron_maps", "neuron_maps_from_activations", "problem_grid", "topk_overlap"]


@resultclass
class NeuronMaps(Result):
    """K and KV maps of MLP neurons over every problem of an operand grid (Nikankin et al.).

    ``values`` (the K map): dims ``(neuron, prompt)``, each neuron's ``mlp_post``
    at the last position for every valid ``(operand_a, operand_b)`` pair of the grid
    (coordinates on ``prompt``: ``operand_a``, ``operand_b``, ``result``; masked cells
    are left out). Extra ``kv``: the K map times ``(W_out[n] @ W_U)[token(result)]``,
    the neuron's direct logit-lens vote for the true result. ``layer`` is a scalar
    coordinate; ``meta.options["max_result"]`` the result limit of the grid.
    """

    metric_name = "activation"
    operation: str = "add"

    def grid(self, neuron: int, *, kind: MapKind = "k") -> xr.DataArray:
        """One neuron's map as an ``operand_a × operand_b`` grid (coords are operand values;
        NaN where the grid has no problem: a masked cell)."""
        data = self.values if kind == "k" else self.extras["kv"]
        row = data.sel(neuron=neuron)
        frame = row.to_series().to_frame("v")
        frame["a"], frame["b"] = row.coords["operand_a"].values, row.coords["operand_b"].values
        table = frame.pivot(index="a", columns="b", values="v")
        table = table.reindex(index=np.arange(table.index.min(), table.index.max() + 1),
                              columns=np.arange(table.columns.min(), table.columns.max() + 1))
        return xr.DataArray(table.to_numpy(), dims=("operand_a", "operand_b"),
                            coords={"operand_a": table.index.to_numpy(), "operand_b": table.columns.to_numpy()})

    def select(self, neurons: Sequence[int]) -> NeuronMaps:
        """The maps of ``neurons`` only."""
        pick = {"neuron": list(neurons)}
        return self.replace(values=self.values.sel(pick), extras={"kv": self.extras["kv"].sel(pick)})

    def plot(self) -> go.Figure:
        neuron = int(self.values.coords["neuron"].values[0])
        grid = self.grid(neuron)
        return go.Figure(
            go.Heatmap(z=grid.values, x=grid.coords["operand_b"].values, y=grid.coords["operand_a"].values),
            layout={"title": f"K map of neuron {neuron}: {self.meta.model}",
                    "xaxis_title": "operand_b", "yaxis_title": "operand_a"},
        )

    @classmethod
    def example(cls) -> NeuronMaps:
        a, b = np.meshgrid(np.arange(5), np.arange(5), indexing="ij")
        k = np.stack([(a + b) % 5 == 3, a == b]).reshape(2, -1).astype(float)
        return _maps(k, k * 2.0, a.ravel(), b.ravel(), (a + b).ravel() % 5, layer=0,
                     neurons=np.arange(2), meta=make_meta("neuron_maps", None), operation="modadd")


def _maps(k, kv, a, b, result, *, layer, neurons, meta, operation) -> NeuronMaps:
    coords = {"neuron": np.asarray(neurons), "prompt": np.arange(len(a)),
              "operand_a": ("prompt", np.asarray(a)), "operand_b": ("prompt", np.asarray(b)),
              "result": ("prompt", np.asarray(result)), "layer": layer}
    values = xr.DataArray(np.asarray(k, dtype=np.float64), dims=("neuron", "prompt"), coords=coords)
    kv_arr = xr.DataArray(np.asarray(kv, dtype=np.float64), dims=("neuron", "prompt"), coords=coords)
    return NeuronMaps(values=values, meta=meta, extras={"kv": kv_arr}, operation=operation)


def problem_grid(spec: TaskSpec, *, max_result: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """The valid problems of ``spec``'s operand grid: ``(keep, a, b, result, queries, answers)``,
    ``keep`` the boolean of every cell of :func:`~arithinterp.methods.grid.operand_grid`
    (:func:`~arithinterp.methods.grid.valid_cells`), the rest for the kept cells only (``a`` major)."""
    if max_result is not None and max_result < 0:
        raise MethodError(f"max_result must be >= 0, got {max_result}")
    a, b, result, queries, answers = operand_grid(spec)
    keep = valid_cells(spec, a, b, result, max_result=max_result)
    if not keep.any():
        raise MethodError(f"no problem of the operand grid of {spec} is valid (max_result={max_result})")
    rows = np.flatnonzero(keep)
    return keep, a[rows], b[rows], result[rows], [queries[i] for i in rows], [answers[i] for i in rows]


def neuron_maps(
    model: Model,
    spec: TaskSpec,
    *,
    layer: int,
    neurons: Sequence[int] | None = None,
    max_result: int | None = None,
    batch_size: int = 1024,
) -> NeuronMaps:
    """K and KV maps of ``layer``'s neurons over the valid problems of the operand grid of ``spec``.

    Args:
        model: the model.
        spec: the task; its ``operand_range`` (or ``p`` for ``modadd``) gives the grid, and its
            operation which cells are problems (no divisor 0; ``a >= b`` for a subtraction
            with ``allow_negative=False``).
        layer: the MLP layer.
        neurons: which neurons (default: all).
        max_result: leave out the cells whose result is larger (``None``: keep every result);
            e.g. 999 for products a model writes as one token.
        batch_size: prompts per forward pass.

    A caller that already swept the grid (:func:`~arithinterp.methods.grid.grid_activations`)
    passes its ``mlp_post`` activations to :func:`neuron_maps_from_activations` instead.
    """
    _answer_tokens(model, spec, max_result)  # a multi-token result fails before the sweep
    site = Site("mlp_post", layer, pos=-1)
    acts = grid_activations(model, spec, [site], batch_size=batch_size)[site]
    return neuron_maps_from_activations(model, spec, acts, layer=layer, neurons=neurons, max_result=max_result)


def neuron_maps_from_activations(
    model: Model,
    spec: TaskSpec,
    acts: torch.Tensor,
    *,
    layer: int,
    neurons: Sequence[int] | None = None,
    max_result: int | None = None,
) -> NeuronMaps:
    """:func:`neuron_maps` from ``layer``'s ``mlp_post`` activations at the last position over
    the operand grid of ``spec``, already computed: ``[operand_a, operand_b, neuron]`` (as
    :func:`~arithinterp.methods.grid.grid_activations` returns them) or ``[prompt, neuron]`` in
    the order of :func:`~arithinterp.methods.grid.operand_grid` (every cell; the masked ones
    are dropped here). ``model`` gives the weights of the KV maps' votes and the answer tokens."""
    keep, a, b, result, _queries, _answers = problem_grid(spec, max_result=max_result)
    acts = torch.as_tensor(acts)
    n_cells = len(keep)
    if acts.shape[:-1] not in ((n_cells,), (int(round(np.sqrt(n_cells))),) * 2):
        raise ArithInterpError(f"activations of shape {tuple(acts.shape)} do not cover the {n_cells} "
                               f"prompts of the operand grid of {spec}")
    answer_tok = _answer_tokens(model, spec, max_result)
    idx = torch.arange(model.shape.d_mlp) if neurons is None else torch.as_tensor(list(neurons))
    k = acts.reshape(n_cells, -1)[torch.as_tensor(np.flatnonzero(keep))][:, idx].double().cpu().T  # [neuron, prompt]
    w = model.weights()
    votes = (w.W_out[layer, idx].detach().double() @ w.W_U.detach().double()).cpu()  # [neuron, vocab]
    kv = k * votes[:, answer_tok.cpu()]
    meta = make_meta("neuron_maps", model, None, options={"layer": layer, "spec": spec.model_dump(mode="json"),
                                                          "max_result": max_result})
    return _maps(k.numpy(), kv.numpy(), a, b, result, layer=layer, neurons=idx.numpy(),
                 meta=meta, operation=spec.operation)


def _answer_tokens(model: Model, spec: TaskSpec, max_result: int | None = None) -> torch.Tensor:
    """The one token of each valid grid problem's result, or an error if a result takes more (or
    is a token that does not write it back, such as an unknown-number token)."""
    answers = problem_grid(spec, max_result=max_result)[5]
    tok = model.tokenizer
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in answers]
    bad = sorted({t for t, i in zip(answers, ids) if len(i) != 1 or tok.decode(i).strip() != t}, key=len)
    if bad:
        raise ArithInterpError(
            f"neuron maps need every result to be one token for this tokenizer; {len(bad)} of the grid's "
            f"results are not (e.g. {bad[:3]}): give max_result (the largest single-token result) to leave "
            "those cells out of the grid, a smaller operand_range, or a number-level tokenizer")
    return torch.tensor([i[0] for i in ids], device=model.device)


@resultclass
class HeuristicResult(Result):
    """Heuristic scores per neuron: ``values`` dims ``(neuron, class)``; ``class``
    is the heuristic (coordinates ``family``, ``map_kind``, ``size``: its number of problems (of
    ``meta.options["n_problems"]`` in the grid), ``top_k``: how many top prompts
    its score reads, ``result_set``: the results of a multi-result heuristic, space-separated,
    else ``""``). Extra ``implements``: score ≥ ``threshold``. ``layer`` is a scalar coordinate;
    ``operation`` the task's operation, whose families were scored."""

    metric_name = "score"
    threshold: float = 0.6
    operation: str = "add"

    @property
    def classified(self) -> xr.DataArray:
        """Whether each neuron implements at least one heuristic."""
        return self.extras["implements"].any("class")

    def neuron_heuristics(self, neuron: int) -> list[str]:
        """The heuristics ``neuron`` implements, best score first."""
        row = self.values.sel(neuron=neuron)
        hits = row.where(self.extras["implements"].sel(neuron=neuron), drop=True)
        return [str(h) for h in hits.sortby(hits, ascending=False).coords["class"].values]

    def neurons_of(self, heuristic: str) -> list[int]:
        """The neurons that implement ``heuristic``."""
        col = self.extras["implements"].sel({"class": heuristic})
        return [int(n) for n in col.coords["neuron"].values[col.values]]

    def result_set(self, heuristic: str) -> tuple[int, ...]:
        """The results of a multi-result heuristic (``()`` for the other families)."""
        text = str(self.values.coords["result_set"].sel({"class": heuristic}).values)
        return tuple(int(x) for x in text.split())

    def plot(self) -> go.Figure:
        best = self.values.max("class")
        return go.Figure(
            go.Histogram(x=best.values, nbinsx=20),
            layout={"title": f"best heuristic score per neuron (t = {self.threshold}): {self.meta.model}",
                    "xaxis_title": "score", "yaxis_title": "neurons"},
        )

    @classmethod
    def example(cls) -> HeuristicResult:
        return classify_neurons(NeuronMaps.example())


def _score(maps: NeuronMaps, moduli: Sequence[int]) -> tuple[list[Heuristic], np.ndarray]:
    """Every heuristic of the maps' operator and every neuron's score for it."""
    c = maps.values.coords
    a, b, r = c["operand_a"].values, c["operand_b"].values, c["result"].values
    hs = heuristics(a, b, r, moduli=moduli, operation=maps.operation)
    scores = np.zeros((maps.sizes["neuron"], len(hs)))
    for kind, array in (("k", maps.values.values), ("kv", maps.extras["kv"].values)):
        cols = [i for i, h in enumerate(hs) if h.map_kind == kind]
        if cols:
            scores[:, cols] = topk_overlap(array, np.stack([hs[i].mask for i in cols]), [hs[i].top_k for i in cols])
    multi, multi_scores = multi_result_heuristics(maps.extras["kv"].values, r, operation=maps.operation)
    return hs + multi, np.concatenate([scores, multi_scores], axis=1)


def classify_neurons(
    maps: NeuronMaps | Model,
    spec: TaskSpec | None = None,
    *,
    layer: int | None = None,
    neurons: Sequence[int] | None = None,
    threshold: float = 0.6,
    moduli: Sequence[int] = range(2, 11),
    max_result: int | None = None,
) -> HeuristicResult:
    """Score every neuron of ``maps`` against every heuristic of its operator (HYBRID: result
    heuristics on KV maps, operand heuristics on K maps;
    :mod:`~arithinterp.methods.heuristic_families`).

    Args:
        maps: :func:`neuron_maps` output, or a model (then ``spec``, ``layer`` and
            ``max_result`` are passed to :func:`neuron_maps`).
        threshold: a neuron implements ``H`` when its score is at least this.
        moduli: the ``n`` of the ``m mod n`` families.
    """
    if not 0 < threshold <= 1:
        raise ArithInterpError(f"threshold must lie in (0, 1], got {threshold}")
    if isinstance(maps, Model):
        if spec is None or layer is None:
            raise ArithInterpError("classify_neurons(model, spec, layer=...) needs a spec and a layer")
        maps = neuron_maps(maps, spec, layer=layer, neurons=neurons, max_result=max_result)
    hs, scores = _score(maps, moduli)
    coords = {"neuron": maps.values.coords["neuron"].values, "class": [h.name for h in hs],
              "family": ("class", [h.family for h in hs]),
              "map_kind": ("class", [h.map_kind for h in hs]),
              "size": ("class", np.array([int(h.mask.sum()) for h in hs], dtype=np.int64)),
              "top_k": ("class", np.array([h.top_k for h in hs], dtype=np.int64)),
              "result_set": ("class", [" ".join(map(str, h.result_set)) for h in hs]),
              "layer": maps.values.coords["layer"].values}
    values = xr.DataArray(scores, dims=("neuron", "class"), coords=coords)
    meta = maps.meta.replace(method="classify_neurons",
                             options={**maps.meta.options, "threshold": threshold, "moduli": list(moduli),
                                      "n_problems": int(maps.sizes["prompt"])})
    return HeuristicResult(values=values, meta=meta, extras={"implements": values >= threshold},
                           threshold=threshold, operation=maps.operation)


KnockoutAblation = Literal["zero", "mean", "resample"]
KNOCKOUT_ABLATIONS: tuple[str, ...] = ("zero", "mean", "resample")


def _knockout_values(model: Model, tokens: torch.Tensor, layer: int, ablation: str, *, seed: int,
                     batch_size: int) -> torch.Tensor:
    """What a knocked-out neuron is set to: ``[d_mlp]`` (zero, mean over the grid) or, for
    resample, ``[n_grid, d_mlp]``: row ``i`` is another grid prompt's activation."""
    site = Site("mlp_post", layer, pos=-1)
    if ablation == "zero":
        return torch.zeros(model.shape.d_mlp)
    acts = torch.cat([model.run_with_cache(tokens[s:s + batch_size], [site])[1][site].detach().cpu()
                      for s in range(0, tokens.shape[0], batch_size)])
    if ablation == "mean":
        return acts.double().mean(0).to(acts.dtype)
    draw = resample_draws(acts.shape[0], acts.shape[0], n_draws=1, seed=seed, self_reference=True)[0]
    return acts[draw]


def heuristic_knockout(
    model: Model,
    spec: TaskSpec,
    heuristics_result: HeuristicResult,
    heuristic: str,
    *,
    n: int = 100,
    ablation: KnockoutAblation = "zero",
    seed: int = 0,
    batch_size: int = 1024,
) -> ScalarTable:
    """Accuracy on prompts associated with ``heuristic`` and on unassociated ones,
    before and after knocking out (``mlp_post`` at the last position) every neuron
    that implements it.

    ``ablation``: ``"zero"`` (the paper's knockout: the activation set to 0), ``"mean"``
    (its mean over every grid prompt) or ``"resample"`` (the activation of another grid
    prompt, by a permutation seeded with ``seed``). ``"counterfactual"`` and ``"optimal"``
    do not apply (a knockout has no corrupt prompts, and no circuit loss to minimise) and
    raise :class:`MethodError`.

    Both groups are drawn (up to ``n`` each) from the grid's problems (the grid the
    classification scored: its ``max_result``) that the model answers correctly, so the
    baseline accuracy is 1. Returns a
    :class:`ScalarTable` with dims ``(target, stat)``: ``target`` is
    ``associated`` / ``unassociated``; ``stat`` is ``accuracy`` (before),
    ``ablated_accuracy`` and ``logprob_drop`` (mean fall of the answer's
    log-probability, which moves even when a wide model's accuracy does not).
    """
    if ablation not in KNOCKOUT_ABLATIONS:
        raise MethodError(f"heuristic_knockout: unknown or inapplicable ablation {ablation!r}; valid: "
                          f"{', '.join(KNOCKOUT_ABLATIONS)} (a knockout has no corrupt prompts, and no loss to "
                          "learn optimal constants on)")
    if heuristic not in heuristics_result.values.coords["class"].values:
        raise ArithInterpError(f"unknown heuristic {heuristic!r}; see heuristics_result.values.coords['class']")
    layer = int(heuristics_result.values.coords["layer"])
    neurons = heuristics_result.neurons_of(heuristic)
    _, a, b, result, queries, answers = problem_grid(spec, max_result=heuristics_result.meta.options.get("max_result"))
    moduli = heuristics_result.meta.options.get("moduli", list(range(2, 11)))
    members = heuristics_result.result_set(heuristic)
    masks = {h.name: h.mask for h in heuristics(a, b, result, moduli=moduli, operation=spec.operation)}
    if members:
        masks[heuristic] = np.isin(result, members)
    if heuristic not in masks:
        raise ArithInterpError(f"heuristic {heuristic!r} is not defined on the grid of {spec}")
    mask = masks[heuristic]
    answer_tok = torch.tensor([model.tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in answers])
    tokens = model.to_tokens(queries)
    idx = torch.as_tensor(neurons, dtype=torch.long)
    replacement = _knockout_values(model, tokens, layer, ablation, seed=seed, batch_size=batch_size) \
        if len(neurons) else None

    def knock(rows: np.ndarray):
        def fn(act: torch.Tensor) -> torch.Tensor:
            act = act.clone()  # the backend's tensor may be read downstream
            value = replacement if replacement.ndim == 1 else replacement[torch.as_tensor(rows)]
            act[:, idx] = value[..., idx].to(act.dtype)
            return act
        return fn

    def score(rows: np.ndarray, ablated: bool) -> tuple[np.ndarray, np.ndarray]:
        """Whether each prompt is answered correctly, and its answer log-probability."""
        hits, logps = [np.zeros(0, bool)], [np.zeros(0)]
        for start in range(0, len(rows), batch_size):
            t = tokens[rows[start : start + batch_size]]
            patches = {Site("mlp_post", layer, pos=-1): knock(rows[start:start + batch_size])} \
                if ablated and len(neurons) else {}
            logits = model.logits(t, patches)[:, -1].detach().double().cpu()
            ans = answer_tok[rows[start : start + batch_size]]
            hits.append((logits.argmax(-1) == ans).numpy())
            logps.append(torch.log_softmax(logits, -1).gather(1, ans[:, None])[:, 0].numpy())
        return np.concatenate(hits), np.concatenate(logps)

    ok, _ = score(np.arange(len(a)), ablated=False)
    rng = np.random.default_rng(seed)
    table = np.full((2, 3), np.nan)
    sizes = []
    for i, group in enumerate([mask & ok, ~mask & ok]):
        rows = np.flatnonzero(group)
        rows = rng.choice(rows, size=min(n, len(rows)), replace=False)
        sizes.append(len(rows))
        if len(rows):
            _, base_logp = score(rows, ablated=False)
            hit, logp = score(rows, ablated=True)
            table[i] = [1.0, hit.mean(), (base_logp - logp).mean()]
    meta = make_meta("heuristic_knockout", model, None,
                     options={"heuristic": heuristic, "layer": layer, "n": n, "ablation": ablation, "seed": seed},
                     extra={"neurons": neurons, "n_prompts": sizes})
    return ScalarTable.from_array(table, dims=("target", "stat"), meta=meta, metric="knockout",
                                  coords={"target": ["associated", "unassociated"],
                                          "stat": ["accuracy", "ablated_accuracy", "logprob_drop"]})


# -- the whole analysis, as the pipeline and the report run it ------------------------------------

#: Neurons whose K/KV maps :func:`find_heuristics` keeps (the best-classified ones): every
#: neuron's maps would be ``d_mlp x |grid| x 2`` floats.
KEEP_MAPS = 64


def find_heuristics(
    model: Model,
    spec: TaskSpec,
    *,
    layer: int | None = None,
    neurons: Sequence[int] | None = None,
    threshold: float = 0.6,
    moduli: Sequence[int] = tuple(range(2, 11)),
    knockout: int = 3,
    knockout_n: int = 100,
    knockout_ablation: KnockoutAblation = "zero",
    operand_range: tuple[int, int] | None = None,
    max_result: int | None = None,
    seed: int = 0,
    batch_size: int = 1024,
    activations: torch.Tensor | None = None,
) -> dict[str, Result]:
    """Nikankin et al.'s bag of heuristics on one MLP layer, end to end.

    K/KV maps of ``layer``'s neurons (default: the last layer) over the operand grid
    (:func:`neuron_maps`), classification at ``threshold`` (:func:`classify_neurons`), and a
    knockout (:func:`heuristic_knockout`) of each of the ``knockout`` heuristics implemented by
    the most neurons. Returns ``{"classification", "maps" (the :data:`KEEP_MAPS` best-classified
    neurons), "knockout" (dims class, target, stat; absent when no neuron is classified)}``.
    ``operand_range``: the grid's operand domain (default: the task's), e.g. ``(0, 99)`` for the
    products of ``ops-2d-tok`` whose task samples ``(0, 31)``; ``max_result``: leave out the cells
    whose result is larger (products above the largest single-token number).
    ``activations``: ``layer``'s ``mlp_post`` over the grid, already swept
    (:func:`neuron_maps_from_activations`), so the grid is not run again.
    """
    layer = model.shape.n_layers - 1 if layer is None else layer
    if operand_range is not None:
        spec = spec.model_copy(update={"operand_range": tuple(operand_range)})
    if activations is None:
        maps = neuron_maps(model, spec, layer=layer, neurons=neurons, max_result=max_result, batch_size=batch_size)
    else:
        maps = neuron_maps_from_activations(model, spec, activations, layer=layer, neurons=neurons,
                                            max_result=max_result)
    classes = classify_neurons(maps, threshold=threshold, moduli=moduli)
    implements = classes.extras["implements"]
    counts = implements.sum("neuron").to_series().sort_values(ascending=False, kind="stable")
    top = [str(h) for h, c in counts.items() if c > 0][:knockout]
    out: dict[str, Result] = {"classification": classes}
    best = classes.values.max("class").to_series()
    classified = best[implements.any("class").to_series()].sort_values(ascending=False, kind="stable")
    if len(classified):
        out["maps"] = maps.select([int(n) for n in classified.index[:KEEP_MAPS]])
    tables = [heuristic_knockout(model, spec, classes, h, n=knockout_n, ablation=knockout_ablation,
                                 seed=seed, batch_size=batch_size)
              for h in top]
    if tables:
        data = np.stack([t.values.values for t in tables])
        meta = tables[0].meta.replace(options={**tables[0].meta.options, "heuristic": top})
        out["knockout"] = ScalarTable.from_array(
            data, dims=("class", "target", "stat"), meta=meta, metric="knockout",
            coords={"class": top, "target": tables[0].values.coords["target"].values,
                    "stat": tables[0].values.coords["stat"].values})
    return out


# -- registration ---------------------------------------------------------------------------------


class HeuristicsOptions(Options):
    """Options of :func:`find_heuristics`."""

    layer: int | None = Field(None, ge=0)
    neurons: list[int] | None = None
    threshold: float = Field(0.6, gt=0, le=1)
    moduli: list[int] = Field(default_factory=lambda: list(range(2, 11)), min_length=1)
    knockout: int = Field(3, ge=0)
    knockout_n: int = Field(100, ge=1)
    knockout_ablation: KnockoutAblation = "zero"
    operand_range: tuple[int, int] | None = None
    max_result: int | None = Field(None, ge=0)
    batch_size: int = Field(1024, ge=1)

    @field_validator("operand_range")
    @classmethod
    def _ordered(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not 0 <= v[0] <= v[1]:
            raise ValueError(f"operand_range must be [lo, hi] with 0 <= lo <= hi, got {list(v)}")
        return v


def _check_heuristics(ctx: RunContext, options: HeuristicsOptions) -> None:
    check_layer(ctx.model, options.layer)
    bad = [i for i in options.neurons or [] if not 0 <= i < ctx.model.shape.d_mlp]
    if bad:
        raise SiteError(f"neurons: {bad} outside 0..{ctx.model.shape.d_mlp - 1}")
    spec = ctx.spec
    if options.operand_range is not None:
        spec = spec.model_copy(update={"operand_range": tuple(options.operand_range)})
    _answer_tokens(ctx.model, spec, options.max_result)


#: Report result names of :func:`find_heuristics`' parts.
_REPORT_NAMES = {"classification": "heuristics", "maps": "neuron_maps", "knockout": "heuristic_knockout"}


def _report_heuristics(ctx: RunContext) -> dict:
    spec = report_grid_spec(ctx.spec)
    layer = ctx.model.shape.n_layers - 1
    swept = ctx.recall(("grid_activations", spec.model_dump_json()))  # the Fourier view's sweep, if it ran
    acts = swept.get(Site("mlp_post", layer, pos=-1)) if swept else None
    try:
        parts = find_heuristics(ctx.model, spec, layer=layer, seed=ctx.seed, activations=acts)
    except ArithInterpError as err:
        raise NotApplicable(f"neuron maps do not apply: {err}") from err
    return {_REPORT_NAMES[k]: v for k, v in parts.items()}


def _read_heuristic(result: HeuristicResult, sites: list[Site]) -> list[str]:
    layer = int(result.values.coords["layer"])
    known = {int(n) for n in result.values.coords["neuron"].values}
    out = []
    for s in sites:
        found = result.neuron_heuristics(s.neuron) if s.layer == layer and s.neuron in known else []
        out.append(found[0] if found else "")
    return out


def _read_heuristic_score(result: HeuristicResult, sites: list[Site]) -> np.ndarray:
    layer = int(result.values.coords["layer"])
    best = result.values.max("class")
    known = {int(n) for n in best.coords["neuron"].values}
    return np.array([float(best.sel(neuron=s.neuron)) if s.layer == layer and s.neuron in known else np.nan
                     for s in sites])


register(MethodSpec(
    name="heuristics", function=find_heuristics, inputs="grid",
    result=(HeuristicResult, NeuronMaps, ScalarTable), options=HeuristicsOptions, check=_check_heuristics,
    report=ReportView(
        run=_report_heuristics,
        results=tuple(_REPORT_NAMES.values()),
        columns=(ReportColumn("heuristic", "neurons", "heuristics", _read_heuristic,
                              "the neuron's best heuristic (score >= the threshold)", missing=""),
                 ReportColumn("heuristic_score", "neurons", "heuristics", _read_heuristic_score,
                              "the neuron's best heuristic score")),
        figures={"heuristics": "Neuron heuristics (Nikankin et al.)", "heuristic_knockout": "Heuristic knockout"},
        order=70,
    ),
))
