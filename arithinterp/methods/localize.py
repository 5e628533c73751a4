"""Where a causal variable lives: IIA per (layer x position) beside the probe accuracy there.

:func:`localize_variables` runs, for each variable and each residual-stream site of the
depth axis (``layer = k`` is the stream entering block ``k``, ``layer = n_layers`` the final
stream, as for probes and the lens) at each position, an interchange intervention with a
subspace learned by DAS (``subspace="das"``, ``dim`` dims, a short schedule) or the full
vector (``"full"``), scored on held-out pairs; and a logistic probe of the variable on the
same sites (fitted on the training sources, scored on the held-out sources). The two maps side
by side separate *decodable and causal*, *decodable only* and *causal only* sites
(:meth:`LocalizationResult.agreement`).

It is also the pipeline step and report method ``causal_variables``. The report runs it with
the full vector at the answer positions on the task's first four intermediate variables that
vary (its inputs when none does) (fast:
one forward pass per cell); its ``iia_best`` column gives, per head / neuron, the best IIA of
any variable in the stream right after the component's layer, and the result's
:meth:`~LocalizationResult.best` table the best site and its IIA per variable.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
import xarray as xr
from plotly.subplots import make_subplots
from tqdm.auto import tqdm

from arithinterp.errors import MethodError, TokenizationError
from arithinterp.methods._common import make_meta
from arithinterp.methods.das import _Rotation, _train
from arithinterp.methods.interchange import Featurizer, full_swap, interchange_batch, successes
from arithinterp.methods.probes import LinearProbe
from arithinterp.methods.registry import (
    MethodSpec,
    NotApplicable,
    ReportColumn,
    ReportView,
    RunContext,
    register,
)
from arithinterp.models import Model, Site
from arithinterp.models.site import depth_site
from arithinterp.results import Result, ResultMeta
from arithinterp.results.base import resultclass
from arithinterp.tasks import PromptSet, generate
from arithinterp.tasks.causal import CausalModel, causal_model

__all__ = ["LocalizationResult", "default_variables", "localize_variables"]

Subspace = Literal["das", "full"]
#: Thresholds of :meth:`LocalizationResult.agreement`: causal at IIA >= 0.8, decodable at probe accuracy >= 0.9.
CAUSAL, DECODABLE = 0.8, 0.9


@resultclass
class LocalizationResult(Result):
    """IIA of each variable at each residual site and position.

    ``values``: dims ``(target, layer, pos)``: held-out IIA (``target`` = the variable;
    ``layer`` = depth on the residual axis, coordinate ``site`` its label; ``pos_token``).
    Extras: ``probe`` (held-out accuracy of a logistic probe of the variable at the same site).
    Fields: ``subspace`` (``"das"`` / ``"full"``), ``dim``.
    """

    metric_name = "iia"
    subspace: str = "das"
    dim: int = 1

    def best(self) -> pd.DataFrame:
        """Per variable: ``iia_best``, its site and position, and the probe accuracy there."""
        rows = []
        for target in self.values.coords["target"].values:
            iia = self.values.sel(target=target)
            probe = self.extras["probe"].sel(target=target)
            flat = int(np.nanargmax(np.nan_to_num(iia.values, nan=-1)))
            i, j = np.unravel_index(flat, iia.shape)
            rows.append({"target": str(target), "iia_best": float(iia.values[i, j]),
                         "site": str(iia.coords["site"].values[i]), "layer": int(iia.coords["layer"].values[i]),
                         "pos": int(iia.coords["pos"].values[j]), "probe_at_best": float(probe.values[i, j]),
                         "probe_best": float(np.nanmax(probe.values))})
        return pd.DataFrame(rows)

    def agreement(self, causal: float = CAUSAL, decodable: float = DECODABLE) -> pd.DataFrame:
        """Each cell labeled ``decodable and causal`` / ``decodable only`` / ``causal only`` / ``neither``."""
        frame = self.to_frame()
        is_c, is_d = frame[self.metric] >= causal, frame["probe"] >= decodable
        frame["agreement"] = np.select([is_c & is_d, is_d, is_c], ["decodable and causal", "decodable only",
                                                                   "causal only"], "neither")
        return frame

    def plot(self) -> go.Figure:
        targets = [str(t) for t in self.values.coords["target"].values]
        titles = [f"{t}: {what}" for t in targets for what in ("IIA (causal)", "probe accuracy (decodable)")]
        fig = make_subplots(rows=len(targets), cols=2, subplot_titles=titles, shared_yaxes=True)
        x = [f"{p}:{tok}" for p, tok in zip(self.values.coords["pos"].values, self.values.coords["pos_token"].values)]
        y = [str(s) for s in self.values.coords["site"].values]
        for r, target in enumerate(targets, start=1):
            for c, arr in enumerate((self.values, self.extras["probe"]), start=1):
                z = arr.sel(target=target).values
                fig.add_trace(go.Heatmap(z=z, x=x, y=y, zmin=0, zmax=1, colorscale="Viridis", showscale=(r, c) == (1, 1),
                                         hovertemplate="%{y} %{x}: %{z:.3f}<extra></extra>"), row=r, col=c)
        return fig.update_layout(height=260 * len(targets) + 80, title=f"Causal ({self.subspace}, dim {self.dim}) "
                                 "vs decodable, per residual site and position")

    @classmethod
    def example(cls) -> LocalizationResult:
        rng = np.random.default_rng(0)
        coords = {"target": ["carry_in_1"], "layer": [0, 1], "site": ("layer", ["L0 pre", "L0 post"]),
                  "pos": [0, 1, 2], "pos_token": ("pos", ["1", "+", "="])}
        values = xr.DataArray(rng.uniform(size=(1, 2, 3)), dims=("target", "layer", "pos"), coords=coords)
        meta = ResultMeta(method="causal_variables", model="synthetic", seed=0)
        return cls(values=values, meta=meta, extras={"probe": values.copy(data=rng.uniform(size=(1, 2, 3)))})


def default_variables(cm: CausalModel) -> list[str]:
    """The intermediate variables of a causal model (carries, borrows, running sums, ``raw_sum``)."""
    return [v.name for v in cm.variables if v.role == "intermediate" and v.name != "negative"]


def _probe_scores(train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor, test_y: np.ndarray) -> np.ndarray:
    """Held-out accuracy of a logistic probe per cell: ``train_x [cell, n, d]`` -> ``[cell]``."""
    if len(np.unique(train_y)) < 2:
        return np.full(train_x.shape[0], np.nan)
    probe = LinearProbe("logistic").fit(train_x.double(), train_y)
    pred = probe.predict(test_x.double())
    return (np.asarray(pred) == test_y[None, :]).mean(-1)


def _resid_cache(model: Model, tokens: torch.Tensor, sites: list[Site]) -> torch.Tensor:
    """``[site, n, pos, d]`` activations of every site (all positions)."""
    _, cache = model.run_with_cache(tokens, sites)
    return torch.stack([cache[s].float() for s in sites])


def _localize_one(model: Model, cm: CausalModel, train_ps: PromptSet, test_ps: PromptSet, variable: str, *,
                  positions: list[int], subspace: Subspace, dim: int, steps: int, lr: float, seed: int,
                  bar: tqdm) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    train_pairs = cm.make_pairs(train_ps, variable, seed=seed)
    test_pairs = cm.make_pairs(test_ps, variable, seed=seed + 1)
    train = interchange_batch(model, cm, train_pairs, variable)
    test = interchange_batch(model, cm, test_pairs, variable)
    n = model.shape.n_layers
    sites = [depth_site(k, n) for k in range(n + 1)]
    src_train, src_test = _resid_cache(model, train.source, sites), _resid_cache(model, test.source, sites)
    iia = np.full((n + 1, len(positions)), np.nan)
    for k, whole in enumerate(sites):
        for j, pos in enumerate(positions):
            site = whole.at(pos)
            s_train, s_test = src_train[k, :, pos], src_test[k, :, pos]
            if subspace == "full":
                swap = full_swap
            else:
                rot = _Rotation(s_train.shape[1], dim, False, seed)
                _train(model, train, site, s_train, rot, steps=steps, lr=lr, batch_size=64, penalty=0.0, seed=seed)
                swap = Featurizer(rot.basis()).swap
            iia[k, j] = successes(model, test, site, s_test, swap).mean()
            bar.update()
    y_train, y_test = cm.values(train_pairs.corrupt, variable), cm.values(test_pairs.corrupt, variable)
    cells = lambda t: t[:, :, positions].permute(0, 2, 1, 3).reshape(-1, t.shape[1], t.shape[3])  # noqa: E731
    probe = _probe_scores(cells(src_train), y_train, cells(src_test), y_test).reshape(n + 1, len(positions))
    return iia, probe, tuple(train.str_tokens)


def localize_variables(
    model: Model,
    prompts: PromptSet,
    *,
    variables: list[str] | None = None,
    positions: list[int] | None = None,
    subspace: Subspace = "das",
    dim: int = 1,
    steps: int = 60,
    lr: float = 0.05,
    n_test: int = 128,
    seed: int = 0,
    progress: bool = True,
) -> LocalizationResult:
    """IIA and probe accuracy of each causal variable at every residual site and position.

    Args:
        model: the model.
        prompts: the training prompts (bases and sources are drawn from them); the held-out
            pairs come from ``n_test`` fresh prompts of the same spec (seed + 1).
        variables: variables of the task's causal model (default: its intermediate
            variables, :func:`default_variables`).
        positions: positions of the intervened sequence (default: every position).
        subspace: ``"das"`` (a ``dim``-dimensional subspace trained for ``steps`` Adam steps at
            ``lr`` per cell) or ``"full"`` (the whole vector).
        seed: seeds the pairs and the rotations.
        progress: show a progress bar over the (variable, layer, position) cells.

    Raises:
        MethodError: an unknown variable or option, before any forward pass.
    """
    cm = causal_model(prompts.spec)
    names = [cm.resolve(v) for v in (variables or default_variables(cm))]
    if subspace not in ("das", "full"):
        raise MethodError(f"subspace must be 'das' or 'full', got {subspace!r}")
    if not isinstance(dim, int) or not 1 <= dim <= model.shape.d_model:
        raise MethodError(f"dim must be an int in 1..{model.shape.d_model}, got {dim!r}")
    test_ps = generate(prompts.spec.model_copy(update={"n": n_test, "seed": prompts.spec.seed + 1}))
    results, tokens = [], ()
    seq_len = interchange_batch(model, cm, cm.make_pairs(prompts[:64], names[0], seed=seed), names[0]).base.shape[1]
    pos = list(range(seq_len)) if positions is None else [p % seq_len for p in positions]
    n_cells = len(names) * (model.shape.n_layers + 1) * len(pos)
    with tqdm(total=n_cells, desc="causal variables", disable=not progress, leave=False) as bar:
        for name in names:
            iia, probe, tokens = _localize_one(model, cm, prompts, test_ps, name, positions=pos, subspace=subspace,
                                               dim=dim, steps=steps, lr=lr, seed=seed, bar=bar)
            results.append((iia, probe))
    n = model.shape.n_layers
    coords = {"target": names, "layer": np.arange(n + 1), "site": ("layer", [depth_site(k, n).label for k in range(n + 1)]),
              "pos": pos, "pos_token": ("pos", [tokens[p] for p in pos])}
    values = xr.DataArray(np.stack([r[0] for r in results]), dims=("target", "layer", "pos"), coords=coords)
    probe = values.copy(data=np.stack([r[1] for r in results]))
    options = {"variables": names, "positions": pos, "subspace": subspace, "dim": dim, "steps": steps, "lr": lr,
               "n_test": n_test}
    meta = make_meta("causal_variables", model, prompts, options=options, seed=seed)
    return LocalizationResult(values=values, meta=meta, extras={"probe": probe}, subspace=subspace, dim=dim)


# -- the pipeline step and the report view -----------------------------------------------------------


def _report(ctx: RunContext) -> dict[str, Result]:
    if ctx.spec.operation not in ("add", "sub", "mul", "modadd"):
        raise NotApplicable(f"no causal model for {ctx.spec.operation!r}")
    try:
        prompts = generate(ctx.spec.model_copy(update={"n": max(len(ctx.prompts), 256), "seed": ctx.seed}))
        cm = causal_model(ctx.spec)
        # the intermediate variables that vary on this task, else its inputs (a 1-digit task with
        # small operands never carries)
        varies = [v.name for v in cm.variables if len(np.unique(cm.values(prompts, v.name))) > 1]
        names = ([v for v in default_variables(cm) if v in varies] or
                 [v.name for v in cm.variables if v.role == "input" and v.name in varies])[:4]
        answer_len = ctx.tokens("multi").answer_len
        # The full vector at the answer positions keeps the report fast (one forward pass per
        # cell); run the step with subspace="das" for learned subspaces.
        result = localize_variables(ctx.model, prompts, variables=names, positions=list(range(-answer_len, 0)),
                                    subspace="full", seed=ctx.seed, progress=ctx.progress)
        return {"causal_variables": result}
    except (MethodError, TokenizationError) as err:
        # TokenizationError: a counterfactual answer the tokenizer has no token for (a number-level
        # vocabulary ends at the task's largest answer; an intervened carry can exceed it)
        raise NotApplicable(str(err)) from None


def _read_iia_best(result: LocalizationResult, sites: list[Site]) -> np.ndarray:
    """Per component: the best IIA of any variable in the stream right after its layer."""
    best = result.values.max(("target", "pos"))
    by_depth = {int(k): float(v) for k, v in zip(best.coords["layer"].values, best.values)}
    return np.array([by_depth.get((s.layer or 0) + 1, np.nan) for s in sites])


register(MethodSpec(
    name="causal_variables", function=localize_variables, inputs="prompts", result=LocalizationResult,
    report=ReportView(
        run=_report, results=("causal_variables",),
        columns=ReportColumn.pair("iia_best", "causal_variables", "causal_variables", _read_iia_best,
                                  "best held-out IIA (full vector, answer positions) of a causal variable right after the layer"),
        figures={"causal_variables": "Causal variables: IIA vs probe accuracy"}, order=55,
    ),
))
