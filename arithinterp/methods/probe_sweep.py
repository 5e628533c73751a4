"""Probe sweeps: a linear probe per (site, position, target) of a model, fitted at once.

:func:`fit_probes` caches the residual stream of a model on a
:class:`~arithinterp.tasks.PromptSet`, fits probes (:class:`~arithinterp.methods.probes.LinearProbe`)
for task annotations (carry bits ``SC_i``, operand digits, running sums
``c_hat_k``...) and scores them on held-out prompts, with bootstrap intervals, a
majority baseline and a Hewitt & Liang (2019) control task: each input *type*
gets a fixed random label drawn from the target's label distribution. For
arithmetic the type is what a probe could memorise: by default the operand
digits the target is a function of (``a_digit_2, b_digit_2`` for the carry
``SC_2``; :func:`control_columns`). The control is memorisable from the type but
means nothing, so ``selectivity = score - control`` separates what the probe
reads from the stream from what it could memorise.

:func:`answer_visible` marks the positions where a teacher-forced input already
shows the digit a target is about, so a probe there reads the input, not the
model's computation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Literal, get_args

import numpy as np
import plotly.graph_objects as go
import torch
import xarray as xr
from plotly.subplots import make_subplots

from arithinterp.distributed.executor import Executor
from arithinterp.methods._common import make_meta
from arithinterp.methods.probe_controls import (
    ControlBy,
    control_by_option,
    control_columns,
    control_labels,
    control_plan,
    fit_control,
    fit_type_control,
    job_types,
    type_control_labels,
)
from arithinterp.methods.probe_directions import ProbeDirections, probe_directions
from arithinterp.methods.probe_stream import StreamedProbe, cache_chunk, stream_site_activations
from arithinterp.methods.probes import LinearProbe, ProbeError, fit_ridge_targets, score_predictions
from arithinterp.models import Model, Site
from arithinterp.models.site import site_depth
from arithinterp.progress_bars import tqdm
from arithinterp.results import Result, resultclass
from arithinterp.tasks import PromptSet, tokenize
from arithinterp.tasks.spec import REVERSED_FORMATS

__all__ = [
    "ProbeResult",
    "answer_visible",
    "cache_resid",
    "control_columns",
    "fit_probes",
    "resid_sites",
    "split_prompts",
]

FitKind = Literal["auto", "logistic", "ridge", "circular"]
Split = Literal["random", "operand"]
_MAX_CLASSES = 20


@resultclass
class ProbeResult(Result):
    """Held-out probe scores.

    ``values``: dims ``(target, site, pos)``: accuracy for logistic and circular
    targets, R² for ridge targets (coordinate ``score_kind`` on ``target``).
    ``site`` holds the probed sites' labels in depth order (``"L0 pre"`` =
    embeddings, ``"L0 mid"`` = after layer-0 attention, ..., ``"L1 post"`` =
    final stream), with coordinate ``layer``: the depth as on a lens axis
    (``L1 pre`` and ``L1 mid`` are at 1, ``L1 post`` of a 2-layer model at 2);
    ``pos_token`` labels ``pos``. Extras: ``ci_low``/``ci_high`` (bootstrap over held-out prompts),
    ``control`` (Hewitt & Liang control-task score), ``selectivity`` (score −
    control), ``majority`` (score of always predicting the most frequent training
    label, or the training mean), ``mae`` (ridge targets, else NaN), ``answer_visible``
    (``(target, pos)``: the teacher-forced input already shows the target's digit there, so a
    score of 1 reads the input; :meth:`masked`, :meth:`scores` and the figure mask these cells).
    ``directions``: the fitted probes' directions (a :class:`ProbeDirections`) when
    ``fit_probes`` was asked to keep them.
    """

    metric_name = "score"
    directions: ProbeDirections | None = None

    def plot(self) -> go.Figure:
        targets = [str(t) for t in self.values.coords["target"].values]
        fig = make_subplots(rows=len(targets), cols=1, subplot_titles=targets, shared_xaxes=True)
        x = [f"{p}:{t}" for p, t in zip(self.values.coords["pos"].values,
                                         self.values.coords["pos_token"].values)]
        y = [str(v) for v in self.values.coords["site"].values]
        masked = self.masked()
        for i, target in enumerate(targets, start=1):
            z = self.values.isel(target=i - 1).transpose("site", "pos").values
            hidden = masked.isel(target=i - 1).transpose("site", "pos").values
            fig.add_trace(go.Heatmap(
                z=np.where(hidden, np.nan, z), x=x, y=y, zmin=0, zmax=1, colorscale="Viridis",
                coloraxis="coloraxis", name=target,
                hovertemplate=f"{target}<br>%{{y}} at %{{x}}<br>score %{{z:.3f}}<extra></extra>",
            ), i, 1)
            if hidden.any():  # grey cells saying why: the input already shows the digit
                fig.add_trace(go.Heatmap(
                    z=np.where(hidden, 1.0, np.nan), x=x, y=y, colorscale=[[0, "#d0d0d0"], [1, "#d0d0d0"]],
                    showscale=False, name="masked", text=np.where(hidden, "masked", ""),
                    texttemplate="%{text}", textfont={"color": "#555", "size": 10},
                    hovertemplate=(f"{target}<br>%{{y}} at %{{x}}<br>masked: the teacher-forced input "
                                   "already shows this digit<extra></extra>"),
                ), i, 1)
        fig.update_layout(
            title=f"linear probes: {self.meta.model} (held-out accuracy / R²)",
            coloraxis={"colorscale": "Viridis", "cmin": 0, "cmax": 1},
            height=max(300, 220 * len(targets)),
        )
        fig.update_xaxes(title_text="position: token", row=len(targets), col=1)
        return fig

    def masked(self) -> xr.DataArray:
        """``(target, site, pos)``: cells whose score is not evidence because the teacher-forced
        input already shows the target's digit (``extras["answer_visible"]``; none when absent)."""
        out = xr.zeros_like(self.values, dtype=bool)
        if "answer_visible" in self.extras:
            out = out | self.extras["answer_visible"].astype(bool)
        return out.transpose(*self.values.dims)

    def scores(self) -> xr.DataArray:
        """``values`` with the masked cells (:meth:`masked`) set to NaN: what figures, tables and
        the dashboard read."""
        return self.values.where(~self.masked())

    @classmethod
    def example(cls) -> ProbeResult:
        rng = np.random.default_rng(0)
        shape = (2, 3, 4)
        coords = {
            "target": np.array(["SC_0", "c_hat_1"]),
            "site": np.array(["L0 pre", "L0 mid", "L0 post"]),
            "pos": np.arange(4),
            "score_kind": ("target", np.array(["accuracy", "r2"])),
            "layer": ("site", np.array([0, 0, 1])),
            "pos_token": ("pos", np.array(["1", "+", "2", "="])),
        }
        values = xr.DataArray(rng.random(shape), dims=("target", "site", "pos"), coords=coords)
        extras = {
            name: xr.DataArray(rng.random(shape), dims=values.dims, coords=values.coords)
            for name in ("ci_low", "ci_high", "control", "selectivity", "mae")
        }
        extras["majority"] = xr.DataArray(rng.random(2), dims=("target",),
                                          coords={"target": coords["target"]})
        return cls(values=values, meta=make_meta("fit_probes", None), extras=extras)


def resid_sites(model: Model) -> tuple[list[Site], list[str]]:
    """``resid_pre`` and ``resid_mid`` of every layer, then the final ``resid_post``."""
    n = model.shape.n_layers
    sites = [Site(kind, layer) for layer in range(n) for kind in ("resid_pre", "resid_mid")]
    sites.append(Site("resid_post", n - 1))
    return sites, [s.label for s in sites]


def cache_resid(
    model: Model, tokens: torch.Tensor, sites: Sequence[Site], positions: Sequence[int],
    *, batch_size: int = 256, progress: bool = False, executor: Executor | None = None,
) -> torch.Tensor:
    """Activations ``[site, pos, prompt, d_model]`` (float32) at ``sites`` and ``positions``.

    ``executor`` runs the chunks of prompts on its workers (merged in prompt order)."""
    extract = partial(cache_chunk, sites=list(sites), positions=list(positions))
    chunks = [tokens[start: start + batch_size] for start in range(0, tokens.shape[0], batch_size)]
    if executor is None:
        acts = [extract(model, c) for c in tqdm(chunks, desc="probes: cache", disable=not progress, leave=False)]
    else:
        acts = executor.map(extract, chunks, model=model, desc="probes: cache", progress=progress)
    return torch.cat(acts, dim=1).transpose(1, 2).contiguous()


def split_prompts(
    prompts: PromptSet, *, test_fraction: float, split: Split, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test prompt indices. ``"operand"``: no operand_a value is on both sides."""
    n = len(prompts)
    rng = np.random.default_rng(seed)
    if split == "random":
        order = rng.permutation(n)
        n_test = max(1, round(test_fraction * n))
        return np.sort(order[n_test:]), np.sort(order[:n_test])
    a = prompts.frame["operand_a"].to_numpy()
    values = rng.permutation(np.unique(a))
    counts = {v: c for v, c in zip(*np.unique(a, return_counts=True))}
    test_values, n_test = [], 0
    for v in values:
        if n_test >= test_fraction * n:
            break
        test_values.append(v)
        n_test += counts[v]
    is_test = np.isin(a, test_values)
    if is_test.all() or not is_test.any():
        raise ProbeError("split='operand' needs at least two distinct operand_a values")
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def _resolve_targets(prompts: PromptSet, targets) -> dict[str, np.ndarray]:
    if isinstance(targets, str):
        targets = [targets]
    if isinstance(targets, Mapping):
        out = {str(k): np.asarray(v) for k, v in targets.items()}
    else:
        missing = [t for t in targets if t not in prompts.frame.columns]
        if missing:
            raise ProbeError(
                f"targets {missing} are not columns of the prompt set; columns: "
                f"{list(prompts.frame.columns)} (or pass a dict name -> array)"
            )
        out = {t: prompts.frame[t].to_numpy() for t in targets}
    for name, y in out.items():
        if y.shape != (len(prompts),):
            raise ProbeError(f"target {name!r} has shape {y.shape}, expected ({len(prompts)},)")
        if y.dtype.kind not in "biuf":
            raise ProbeError(f"target {name!r} has dtype {y.dtype}; probes need numbers or bools")
    return out


def _auto_kind(y: np.ndarray) -> str:
    if y.dtype.kind in "biu" and len(np.unique(y)) <= _MAX_CLASSES:
        return "logistic"
    return "ridge"


def _bootstrap(pred: np.ndarray, y: np.ndarray, kind: str, n_boot: int, rng) -> tuple:
    """Percentile 95% interval of the score over resampled held-out prompts (last axis)."""
    if n_boot < 1:
        nan = np.full(pred.shape[:-1], np.nan)
        return nan, nan
    idx = rng.integers(0, y.shape[-1], size=(n_boot, y.shape[-1]))
    yb = np.broadcast_to(y, pred.shape)[..., idx]
    s = score_predictions(pred[..., idx], yb, kind)
    return np.nanquantile(s, 0.025, axis=-1), np.nanquantile(s, 0.975, axis=-1)


def fit_probes(
    model: Model,
    prompts: PromptSet,
    targets: str | Sequence[str] | Mapping[str, np.ndarray],
    *,
    sites: Literal["resid"] | Sequence[Site] = "resid",
    positions: Sequence[int] | None = None,
    kind: FitKind = "auto",
    periods: Sequence[int] = (2, 5, 10),
    test_fraction: float = 0.25,
    split: Split = "random",
    control: bool = True,
    control_by: ControlBy | Sequence[str] | Mapping[str, Sequence[str]] = "auto",
    n_boot: int = 200,
    l2: float = 1e-3,
    seed: int = 0,
    batch_size: int = 256,
    directions: bool = False,
    stream: bool = False,
    progress: bool = True,
    executor: Executor | None = None,
) -> ProbeResult:
    """Fit a linear probe for each (site, position, target) and score it on held-out prompts.

    Args:
        model: the model.
        prompts: a generated task of one token length (the answer follows the prompt).
        targets: frame columns of ``prompts`` (``"SC_2"``, ``"a_digit_0"``, ``"c_hat_3"``) or
            a dict name -> array of one value per prompt.
        sites: ``"resid"`` (resid_pre and resid_mid of every layer, then the final
            resid_post) or a list of whole-layer sites.
        positions: positions to probe (default: all); negative ones count from the end. The
            result's ``pos`` holds absolute positions (``res.at(pos=-1)`` reads the last).
        kind: ``"auto"`` (logistic for integer/bool targets with <= 20 values, ridge
            otherwise), ``"logistic"``, ``"ridge"`` or ``"circular"`` (one probe per period
            in ``periods``, named ``"<target> mod <T>"``).
        test_fraction: share of prompts held out.
        split: ``"random"``, or ``"operand"`` (no operand_a value in both train and test).
        control: also fit the Hewitt & Liang (2019) control task: every input *type*
            gets a fixed random label drawn from the target's label distribution, and
            ``selectivity = score - control``.
        control_by: what an input type is. ``"auto"``: the operand digits the target
            is a function of (:func:`control_columns`; ``SC_2`` -> ``a_digit_2, b_digit_2``),
            else the operand pair; ``"operands"``: the pair ``(operand_a, operand_b)``;
            ``"token"``: the token at the probed position (each token id one label); a list
            of frame columns; or a dict target -> columns. The columns used are in
            ``meta.extra["control_columns"]``.
        n_boot: bootstrap resamples of the held-out prompts for ``ci_low``/``ci_high``.
        l2: probe penalty (see :class:`LinearProbe`).
        seed: seed of the split, the bootstrap and the control task.
        batch_size: prompts per forward pass.
        directions: also keep the fitted probes' directions (numpy, in the residual
            stream's coordinates) as ``result.directions``, a :class:`ProbeDirections`.
        stream: hold one site's activations at a time (one forward pass over the prompts per
            site) instead of every site's at once, and fit ridge and circular probes from
            sufficient statistics (:mod:`~arithinterp.methods.probe_stream`): peak memory
            about one layer's activations plus the model. Scores equal the default fit's
            within float32 rounding of the Gram matrix (logistic probes: identical).
        progress: show progress bars.
        executor: where the forward passes run (default: here; a
            :class:`~arithinterp.distributed.RayExecutor` spreads the chunks of prompts over
            its workers and merges them in prompt order: the same numbers).
    """
    _check_options(kind=kind, split=split, test_fraction=test_fraction)
    if directions and stream:
        raise ProbeError("directions=True needs the default fit; the streamed fit (stream=True) keeps "
                         "only each site's scores, not its probes")
    ys = _resolve_targets(prompts, targets)
    control_cols = control_plan(prompts, ys, control_by) if control else {}
    tokenized = tokenize(prompts, model.tokenizer, answer="multi")
    positions = _resolve_positions(positions, tokenized.tokens.shape[1])
    site_list, labels = _resolve_sites(model, sites)
    train, test = split_prompts(prompts, test_fraction=test_fraction, split=split, seed=seed)

    tokens = tokenized.tokens[:, positions].cpu().numpy()
    jobs = _probe_jobs(ys, kind, periods)
    types = [job_types(prompts, control_cols, name, period) for name, _, _, period in jobs]
    fit = partial(_fit_jobs, jobs, types, train, test, tokens, l2=l2, control=control, n_boot=n_boot)
    if stream:
        rows = _fit_streamed(fit, model, tokenized.tokens, site_list, positions, train, test, seed=seed,
                             batch_size=batch_size, executor=executor, progress=progress)
    else:
        acts = cache_resid(model, tokenized.tokens, site_list, positions, batch_size=batch_size,
                           progress=progress, executor=executor)
        rows = fit(acts[:, :, train].double(), acts[:, :, test].double(), seed=seed, progress=progress)

    coords = {
        "target": np.array([name for name, _, _, _ in jobs]),
        "site": np.array(labels),
        "pos": np.array(positions),
        "score_kind": ("target", np.array(["r2" if k == "ridge" else "accuracy" for _, _, k, _ in jobs])),
        "layer": ("site", np.array([site_depth(s, model.shape.n_layers) for s in site_list])),
        "pos_token": ("pos", np.array([tokenized.str_tokens[p] for p in positions])),
    }
    values, extras = _score_arrays(rows, coords)
    probes = {name: row.pop("probe", None) for (name, _, _, _), row in zip(jobs, rows)}
    extras["answer_visible"] = _visible_at(prompts, model.tokenizer, [j[0].split(" mod ")[0] for j in jobs],
                                           positions, tokenized.prompt_len, tokenized.answer_len, coords)
    options = {"targets": list(ys), "sites": labels, "positions": positions, "kind": kind,
               "periods": list(periods), "test_fraction": test_fraction, "split": split,
               "control": control, "control_by": control_by_option(control_by),
               "n_boot": n_boot, "l2": l2, "batch_size": batch_size, "stream": stream}
    meta = make_meta("fit_probes", model, prompts, options=options, seed=seed,
                     extra={"n_train": len(train), "n_test": len(test),
                            "control_columns": control_cols, "seq_len": tokenized.tokens.shape[1]})
    kept = None
    if directions:
        kept = probe_directions(probes, {k: coords[k] for k in ("site", "pos", "layer", "pos_token")}, meta)
    return ProbeResult(values=values, meta=meta, extras=extras, directions=kept)


def _check_options(*, kind: str, split: str, test_fraction: float) -> None:
    """Fail on a bad option before any forward pass."""
    if kind not in get_args(FitKind):
        raise ProbeError(f"kind={kind!r}; valid kinds: {list(get_args(FitKind))}")
    if split not in get_args(Split):
        raise ProbeError(f"split={split!r}; valid splits: {list(get_args(Split))}")
    if not 0 < test_fraction < 1:
        raise ProbeError(f"test_fraction must be in (0, 1), got {test_fraction}")


def _resolve_positions(positions: Sequence[int] | None, seq_len: int) -> list[int]:
    """The probed positions, non-negative (default: every position)."""
    positions = list(range(seq_len)) if positions is None else [int(p) for p in positions]
    bad = [p for p in positions if not -seq_len <= p < seq_len]
    if bad:
        raise ProbeError(f"positions {bad} are outside 0..{seq_len - 1}")
    return [p % seq_len for p in positions]


def _resolve_sites(model: Model, sites: Literal["resid"] | Sequence[Site]) -> tuple[list[Site], list[str]]:
    """The probed sites and their labels (the result's ``site`` coordinate)."""
    if sites == "resid":
        return resid_sites(model)
    site_list = model.validate(list(sites))
    labels = [s.label for s in site_list]
    if len(set(labels)) != len(labels):  # labels index the result's site axis
        raise ProbeError(f"sites repeat: {labels}")
    return site_list, labels


def _probe_jobs(ys: dict[str, np.ndarray], kind: str, periods: Sequence[int]) -> list[tuple]:
    """``(name, y, kind, period)`` per probed target; a circular target gives one job per period."""
    jobs = []
    for name, y in ys.items():
        y = y.astype(np.int64) if y.dtype.kind == "b" else y
        k = _auto_kind(y) if kind == "auto" else kind
        if k == "circular":
            jobs += [(f"{name} mod {T}", y.astype(np.int64), k, int(T)) for T in periods]
        else:
            jobs.append((name, y, k, None))
    return jobs


def _score_arrays(rows: list[dict], coords: dict) -> tuple[xr.DataArray, dict[str, xr.DataArray]]:
    """The per-target score dicts of :func:`_fit_one` as labelled ``(target, site, pos)`` arrays."""
    dims = ("target", "site", "pos")
    values = xr.DataArray(np.stack([r["score"] for r in rows]), dims=dims, coords=coords)
    extras = {
        name: xr.DataArray(np.stack([r[name] for r in rows]), dims=dims, coords=coords)
        for name in ("ci_low", "ci_high", "control", "selectivity", "mae")
    }
    extras["majority"] = xr.DataArray(np.array([r["majority"] for r in rows]), dims=("target",),
                                      coords={"target": coords["target"]})
    return values, extras


def _fit_jobs(jobs, types, train, test, tokens, X_train, X_test, *, l2, control, n_boot, seed,
              fitter=LinearProbe, progress=False) -> list[dict]:
    """Every job's scores at the sites of ``X_train [site, pos, n, d]``, one generator seeded
    ``seed`` for all of them in job order (so a sweep site by site draws the same numbers)."""
    rng = np.random.default_rng(seed)
    prefit: dict[int, LinearProbe] = {}
    ridge = [i for i, job in enumerate(jobs) if job[2] == "ridge"]
    if fitter is LinearProbe and len(ridge) > 1:  # one factorisation per problem for all ridge targets
        prefit = dict(zip(ridge, fit_ridge_targets(X_train, [jobs[i][1][train] for i in ridge], l2=l2)))
    return [_fit_one(X_train, X_test, y, train, test, tokens, kind=k, period=period, l2=l2,
                     control=control, types=t, n_boot=n_boot, rng=rng, fitter=fitter, probe=prefit.get(i))
            for i, ((name, y, k, period), t) in enumerate(tqdm(list(zip(jobs, types)), desc="probes: fit",
                                                               disable=not progress, leave=False))]


def _fit_streamed(fit, model, tokens, site_list, positions, train, test, *, seed, batch_size, executor,
                  progress) -> list[dict]:
    """``fit`` site by site, each site's activations extracted alone (training prompts first)."""
    order = np.concatenate([train, test])
    rows = None
    for site in tqdm(site_list, desc="probes: stream", disable=not progress, leave=False):
        acts = stream_site_activations(model, tokens, site, positions, order, batch_size=batch_size,
                                       executor=executor)[None]
        site_rows = fit(acts[:, :, :len(train)], acts[:, :, len(train):], seed=seed, fitter=StreamedProbe)
        rows = site_rows if rows is None else [_stack_sites(a, b) for a, b in zip(rows, site_rows)]
        del acts
    return rows


def _stack_sites(a: dict, b: dict) -> dict:
    """Two sites' (or site groups') score dicts, one after the other along the site axis."""
    return {key: a[key] if key == "majority" else np.concatenate([a[key], b[key]])
            for key in a if key != "probe"}  # the streamed probes are not kept (no directions)


def _fit_one(X_train, X_test, y, train, test, tokens, *, kind, period, l2, control, types, n_boot, rng,
             fitter=LinearProbe, probe=None):
    """Score of one target at every (site, pos): a dict of ``[site, pos]`` arrays (``probe``:
    the target's probe, already fitted)."""
    y_eval = np.mod(y, period) if kind == "circular" else y
    score_kind = "ridge" if kind == "ridge" else "accuracy"
    if probe is None:
        probe = fitter(kind, l2=l2, period=period).fit(X_train, y[train])
    pred = probe.predict(X_test)
    y_test = y_eval[test]
    out = {"score": score_predictions(pred, np.broadcast_to(y_test, pred.shape), score_kind), "probe": probe}
    out["ci_low"], out["ci_high"] = _bootstrap(pred, y_test, score_kind, n_boot, rng)
    nan = np.full(out["score"].shape, np.nan)
    out["mae"] = np.abs(pred - y_test).mean(-1) if kind == "ridge" else nan
    if kind == "ridge":
        out["majority"] = float(score_predictions(np.full(len(test), y[train].mean()), y_test, "ridge"))
    else:
        values, counts = np.unique(y_eval[train], return_counts=True)
        out["majority"] = float((y_test == values[counts.argmax()]).mean())
    out["control"], out["selectivity"] = nan, nan
    if control and types is not None:
        y_ctrl = type_control_labels(y, types, rng)
        ctrl = fit_type_control(X_train, X_test, y_ctrl, train, test, kind=kind, period=period, l2=l2,
                                fitter=fitter)
        out["control"] = ctrl
        out["selectivity"] = out["score"] - ctrl
    elif control:
        y_ctrl = control_labels(y, tokens, rng)  # [pos, prompt]
        ctrl = fit_control(X_train, X_test, y_ctrl, train, test, kind=kind, period=period, l2=l2,
                           fitter=fitter)
        out["control"] = ctrl
        out["selectivity"] = out["score"] - ctrl
    return out


_PLACE = re.compile(r"_(\d+)$")


def _visible_at(prompts: PromptSet, tokenizer, bases: list[str], positions: list[int], prompt_len: int,
                answer_len: int, coords: dict) -> xr.DataArray:
    """:func:`answer_visible` at the probed positions, as a ``(target, pos)`` mask: position ``p``'s
    input holds the first ``p - prompt_len + 1`` answer tokens (none before the answer)."""
    vis = answer_visible(prompts, tokenizer, bases, answer_len + 1) if answer_len else \
        np.zeros((len(bases), 1), dtype=bool)
    shown = np.clip(np.asarray(positions) - prompt_len + 1, 0, vis.shape[1] - 1)
    return xr.DataArray(vis[:, shown], dims=("target", "pos"),
                        coords={"target": coords["target"], "pos": coords["pos"]})


def answer_visible(
    prompts: PromptSet, tokenizer, targets: Sequence[str], answer_len: int
) -> np.ndarray:
    """``[target, i]``: whether, at the position predicting answer token ``i``, the teacher-forced
    answer tokens already in the input show the answer digit of the target's place (``answer_digit_j``,
    ``carry_in_j``, ``borrow_j``, ``c_hat_j``: place ``10^j``) for any prompt.

    There the target is read off the input (a carry into place j is the visible digit j minus
    the operand digits), so decoding it says nothing about what the model computed. A target
    without a trailing place number is never visible.
    """
    reversed_ = prompts.spec.format in REVERSED_FORMATS
    out = np.zeros((len(targets), answer_len), dtype=bool)
    places = [int(m.group(1)) if (m := _PLACE.search(t)) else None for t in targets]
    for answer in prompts.answers:
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        shown = [len(tokenizer.decode(ids[:i])) for i in range(answer_len)]  # answer chars in the input
        digits = answer.lstrip("-")
        offset = len(answer) - len(digits)
        for k, place in enumerate(places):
            if place is None or place >= len(digits):
                continue
            char = offset + (place if reversed_ else len(digits) - 1 - place)
            out[k] |= np.array([char < n for n in shown])
    return out
