"""Linear probes on the residual stream, one per (site, position, target), fitted at once.

:class:`LinearProbe` follows scikit-learn's conventions (hyperparameters in
``__init__``, ``fit(X, y) -> self``, learned state in ``coef_``,
``intercept_``, ``classes_``) but is batched: ``X`` of shape ``[..., n, d]``
holds many independent problems (one per layer and position) that are
fitted in one call. Features are standardised per problem, as a scikit-learn
``StandardScaler`` would.

- ``ridge``: one batched closed-form solve ``(X'X + l2 n I) W = X'y``.
- ``logistic``: softmax regression, loss ``mean CE + l2/2 |W|^2`` per problem
  (scikit-learn's ``C = 1 / (l2 n)``), full-batch L-BFGS on all problems together
  (they are independent, so minimising the sum minimises each).
- ``circular``: ridge onto ``(cos, sin)(2 pi x / period)``; predicts ``x mod period``
  from the angle of the prediction, scored by accuracy.

:func:`fit_probes` caches the residual stream of a model on a
:class:`~arithinterp.tasks.PromptSet`, fits probes for task annotations
(carry bits ``SC_i``, operand digits, running sums ``c_hat_k``...) and scores
them on held-out prompts, with bootstrap intervals, a majority baseline and a
Hewitt & Liang (2019) control task: each distinct token at the probed
position gets a random label drawn from the target's label distribution. The
control is memorisable from the token but means nothing, so
``selectivity = score - control`` separates what the probe reads from the
stream from what it could memorise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import numpy as np
import plotly.graph_objects as go
import torch
import xarray as xr
from plotly.subplots import make_subplots
from tqdm.auto import tqdm

from arithinterp.errors import ArithInterpError
from arithinterp.methods._common import make_meta
from arithinterp.models import Model, Site
from arithinterp.results import Result
from arithinterp.tasks import PromptSet, tokenize

ProbeKind = Literal["logistic", "ridge", "circular"]
FitKind = Literal["auto", "logistic", "ridge", "circular"]
Split = Literal["random", "operand"]
_MAX_CLASSES = 20


class ProbeError(ArithInterpError, ValueError):
    """A probe was asked for something it cannot do (unknown target, bad option)."""


def _as_tensor(x, dtype=torch.float64) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


class LinearProbe:
    """A batched linear probe with scikit-learn conventions.

    Args:
        kind: ``"logistic"`` (classes), ``"ridge"`` (real values) or ``"circular"``
            (residue ``x mod period`` through its angle).
        l2: penalty; ridge ``alpha = l2 * n``, logistic ``C = 1 / (l2 * n)``.
        max_iter: L-BFGS iterations (logistic).
        lr: L-BFGS step size (logistic; a strong-Wolfe line search scales it).
        seed: kept for scikit-learn conformance; the fit is deterministic.
        period: the period of a circular probe.

    Learned: ``mean_``, ``scale_`` (standardisation, ``[..., d]``), ``coef_``
    (``[..., d, k]``; ``k`` classes, 1 output for ridge on ``[n]`` targets, 2 for
    circular), ``intercept_`` (``[..., k]``), ``classes_`` (logistic).
    """

    def __init__(
        self,
        kind: ProbeKind = "logistic",
        l2: float = 1e-3,
        max_iter: int = 200,
        lr: float = 1.0,
        seed: int = 0,
        period: int | None = None,
    ):
        self.kind = kind
        self.l2 = l2
        self.max_iter = max_iter
        self.lr = lr
        self.seed = seed
        self.period = period

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in ("kind", "l2", "max_iter", "lr", "seed", "period")}

    def __repr__(self) -> str:
        return f"LinearProbe({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    def _check(self) -> None:
        if self.kind not in get_args(ProbeKind):
            raise ProbeError(f"kind={self.kind!r}; valid kinds: {list(get_args(ProbeKind))}")
        if self.kind == "circular" and (self.period is None or self.period < 2):
            raise ProbeError("a circular probe needs period >= 2, e.g. LinearProbe('circular', period=10)")
        if self.l2 < 0:
            raise ProbeError(f"l2 must be >= 0, got {self.l2}")

    def _standardise(self, X: torch.Tensor) -> torch.Tensor:
        return (X - self.mean_.unsqueeze(-2)) / self.scale_.unsqueeze(-2)

    def fit(self, X, y) -> LinearProbe:
        """Fit every problem in ``X [..., n, d]`` against ``y [n]`` or ``[..., n]``."""
        self._check()
        X = _as_tensor(X)
        if X.ndim < 2:
            raise ProbeError(f"X must be [..., n, d], got shape {tuple(X.shape)}")
        n = X.shape[-2]
        y_np = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)
        if y_np.shape[-1] != n:
            raise ProbeError(f"y has {y_np.shape[-1]} samples, X has {n}")
        self.mean_ = X.mean(-2)
        std = X.std(-2, unbiased=False)
        self.scale_ = torch.where(std > 1e-12, std, torch.ones_like(std))
        Z = self._standardise(X)
        if self.kind == "logistic":
            self._fit_logistic(Z, y_np)
        else:
            target = _as_tensor(y_np)
            if self.kind == "circular":
                angle = 2 * math.pi * target / self.period
                target = torch.stack([angle.cos(), angle.sin()], -1)
            else:
                target = target.unsqueeze(-1)
            self._fit_ridge(Z, target.expand(*X.shape[:-1], target.shape[-1]))
        return self

    def _fit_ridge(self, Z: torch.Tensor, Y: torch.Tensor) -> None:
        n, d = Z.shape[-2:]
        y_mean = Y.mean(-2)
        gram = Z.transpose(-1, -2) @ Z + self.l2 * n * torch.eye(d, dtype=Z.dtype)
        self.coef_ = torch.linalg.solve(gram, Z.transpose(-1, -2) @ (Y - y_mean.unsqueeze(-2)))
        self.intercept_ = y_mean  # Z is centred, so the intercept is the target mean

    def _fit_logistic(self, Z: torch.Tensor, y: np.ndarray) -> None:
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ProbeError(f"a logistic probe needs at least 2 classes, y has {self.classes_}")
        idx = torch.as_tensor(np.searchsorted(self.classes_, y)).expand(Z.shape[:-1])
        if len(self.classes_) == 2:
            self._fit_binary_newton(Z, idx)
            return
        n, d = Z.shape[-2:]
        k = len(self.classes_)
        W = torch.zeros(*Z.shape[:-2], d, k, dtype=Z.dtype)
        b = torch.zeros(*Z.shape[:-2], k, dtype=Z.dtype)
        opt = torch.optim.LBFGS(
            [W, b], lr=self.lr, max_iter=self.max_iter, tolerance_grad=1e-9,
            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe",
        )

        onehot = torch.nn.functional.one_hot(idx, k).to(Z.dtype)
        Zt = Z.transpose(-1, -2)

        # Analytic gradients: autograd's overhead dominates on problems this small.
        @torch.no_grad()
        def closure() -> torch.Tensor:
            logp = torch.log_softmax(Z @ W + b.unsqueeze(-2), -1)
            resid = (logp.exp() - onehot) / n
            W.grad = Zt @ resid + self.l2 * W
            b.grad = resid.sum(-2)
            return -(logp * onehot).sum() / n + 0.5 * self.l2 * (W**2).sum()

        opt.step(closure)
        self.coef_, self.intercept_ = W, b

    def _fit_binary_newton(self, Z: torch.Tensor, idx: torch.Tensor) -> None:
        """Two classes: damped Newton on ``mean BCE + l2/2 |w|^2`` (scikit-learn's binary
        loss), each problem with its own step; converges in a few batched solves."""
        n, d = Z.shape[-2:]
        Z1 = torch.cat([Z, torch.ones(*Z.shape[:-1], 1, dtype=Z.dtype)], -1)
        Z1f = Z1.float()
        t = idx.to(Z.dtype)
        pen = torch.full((d + 1,), self.l2, dtype=Z.dtype)
        pen[-1] = 0.0  # the intercept is not penalised
        eye = torch.diag(pen + 1e-10)

        def loss(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            z = (Z1 @ w.unsqueeze(-1)).squeeze(-1)
            bce = torch.nn.functional.binary_cross_entropy_with_logits(z, t, reduction="none")
            return bce.mean(-1) + 0.5 * (pen * w**2).sum(-1), z

        w = torch.zeros(*Z.shape[:-2], d + 1, dtype=Z.dtype)
        current, z = loss(w)
        for _ in range(self.max_iter):
            p = torch.sigmoid(z)
            grad = (Z1.transpose(-1, -2) @ (p - t).unsqueeze(-1)).squeeze(-1) / n + pen * w
            # the Hessian only steers the step (the loss test below keeps it safe), so
            # float32 is enough for its one costly product
            weighted = Z1f * (p * (1 - p)).to(Z1f.dtype).unsqueeze(-1)
            hess = (Z1f.transpose(-1, -2) @ weighted).to(Z.dtype) / n + eye
            step = torch.linalg.solve(hess, grad)
            scale = torch.ones_like(current)
            for _ in range(30):  # halve each problem's step until its loss goes down
                trial, z_trial = loss(w - scale.unsqueeze(-1) * step)
                worse = trial > current + 1e-12
                if not worse.any():
                    break
                scale = torch.where(worse, scale / 2, scale)
            else:  # a problem that cannot improve (already at its optimum) stays put
                scale = torch.where(worse, torch.zeros_like(scale), scale)
                trial, z_trial = loss(w - scale.unsqueeze(-1) * step)
            w = w - scale.unsqueeze(-1) * step
            done = bool((current - trial).max() < 1e-9)
            current, z = trial, z_trial
            if done:
                break
        half = w[..., :d].unsqueeze(-1) / 2
        self.coef_ = torch.cat([-half, half], -1)  # softmax form: logit difference = w.x + b
        self.intercept_ = torch.stack([-w[..., d] / 2, w[..., d] / 2], -1)

    def decision_function(self, X) -> torch.Tensor:
        """Raw outputs ``[..., m, k]`` (logits, or ridge/circular predictions)."""
        if not hasattr(self, "coef_"):
            raise ProbeError("this LinearProbe is not fitted yet; call fit(X, y) first")
        return self._standardise(_as_tensor(X)) @ self.coef_ + self.intercept_.unsqueeze(-2)

    def predict(self, X) -> np.ndarray:
        """Class labels, real values, or residues mod ``period``: ``[..., m]``."""
        out = self.decision_function(X)
        if self.kind == "logistic":
            return self.classes_[out.argmax(-1).numpy()]
        if self.kind == "circular":
            angle = torch.atan2(out[..., 1], out[..., 0])
            return (torch.round(angle * self.period / (2 * math.pi)) % self.period).long().numpy()
        return out[..., 0].numpy()

    def score(self, X, y) -> np.ndarray | float:
        """Accuracy (logistic, circular) or R² (ridge), one per problem."""
        pred = self.predict(X)
        y = np.broadcast_to(np.asarray(y), pred.shape)
        if self.kind == "circular":
            y = np.mod(y, self.period)
        s = _score(pred, y, self.kind)
        return float(s) if s.ndim == 0 else s


def _score(pred: np.ndarray, y: np.ndarray, kind: str) -> np.ndarray:
    """Score along the last axis: accuracy, or R² for ridge."""
    if kind != "ridge":
        return (pred == y).mean(-1)
    ss_res = ((y - pred) ** 2).sum(-1)
    ss_tot = ((y - y.mean(-1, keepdims=True)) ** 2).sum(-1)
    return 1 - ss_res / np.where(ss_tot > 0, ss_tot, np.nan)


# --------------------------------------------------------------------------------------------
# The result


class ProbeResult(Result):
    """Held-out probe scores.

    ``values``: dims ``(target, layer, pos)``: accuracy for logistic and circular
    targets, R² for ridge targets (coordinate ``score_kind`` on ``target``).
    ``layer`` indexes residual-stream sites in depth order, labelled by the
    coordinate ``layer_label`` (``"L0 pre"`` = embeddings, ``"L0 mid"`` = after
    layer-0 attention, ..., ``"L1 post"`` = final stream); ``pos_token`` labels
    ``pos``. Extras: ``ci_low``/``ci_high`` (bootstrap over held-out prompts),
    ``control`` (Hewitt & Liang control-task score), ``selectivity`` (score −
    control), ``majority`` (score of always predicting the most frequent training
    label, or the training mean), ``mae`` (ridge targets, else NaN).
    """

    metric_name = "score"

    def plot(self) -> go.Figure:
        targets = [str(t) for t in self.values.coords["target"].values]
        fig = make_subplots(rows=len(targets), cols=1, subplot_titles=targets, shared_xaxes=True)
        x = [f"{p}:{t}" for p, t in zip(self.values.coords["pos"].values,
                                         self.values.coords["pos_token"].values)]
        y = [str(v) for v in self.values.coords["layer_label"].values]
        for i, target in enumerate(targets, start=1):
            z = self.values.isel(target=i - 1).transpose("layer", "pos").values
            fig.add_trace(go.Heatmap(
                z=z, x=x, y=y, zmin=0, zmax=1, colorscale="Viridis", coloraxis="coloraxis",
                hovertemplate=f"{target}<br>%{{y}} at %{{x}}<br>score %{{z:.3f}}<extra></extra>",
            ), i, 1)
        fig.update_layout(
            title=f"linear probes: {self.meta.model} (held-out accuracy / R²)",
            coloraxis={"colorscale": "Viridis", "cmin": 0, "cmax": 1},
            height=max(300, 220 * len(targets)),
        )
        fig.update_xaxes(title_text="position: token", row=len(targets), col=1)
        return fig

    @classmethod
    def example(cls) -> ProbeResult:
        rng = np.random.default_rng(0)
        shape = (2, 3, 4)
        coords = {
            "target": np.array(["SC_0", "c_hat_1"]),
            "layer": np.arange(3),
            "pos": np.arange(4),
            "score_kind": ("target", np.array(["accuracy", "r2"])),
            "layer_label": ("layer", np.array(["L0 pre", "L0 mid", "L0 post"])),
            "pos_token": ("pos", np.array(["1", "+", "2", "="])),
        }
        values = xr.DataArray(rng.random(shape), dims=("target", "layer", "pos"), coords=coords)
        extras = {
            name: xr.DataArray(rng.random(shape), dims=values.dims, coords=values.coords)
            for name in ("ci_low", "ci_high", "control", "selectivity", "mae")
        }
        extras["majority"] = xr.DataArray(rng.random(2), dims=("target",),
                                          coords={"target": coords["target"]})
        return cls(values=values, meta=make_meta("fit_probes", None), extras=extras)


# --------------------------------------------------------------------------------------------
# Fitting probes on a model


def resid_sites(model: Model) -> tuple[list[Site], list[str]]:
    """``resid_pre`` and ``resid_mid`` of every layer, then the final ``resid_post``."""
    n = model.shape.n_layers
    sites, labels = [], []
    for layer in range(n):
        sites += [Site("resid_pre", layer), Site("resid_mid", layer)]
        labels += [f"L{layer} pre", f"L{layer} mid"]
    return sites + [Site("resid_post", n - 1)], labels + [f"L{n - 1} post"]


def cache_resid(
    model: Model, tokens: torch.Tensor, sites: Sequence[Site], positions: Sequence[int],
    *, batch_size: int = 256, progress: bool = False,
) -> torch.Tensor:
    """Activations ``[site, pos, prompt, d_model]`` (float32) at ``sites`` and ``positions``."""
    pos = torch.as_tensor(list(positions))
    chunks = []
    for batch in tqdm(range(0, tokens.shape[0], batch_size), desc="probes: cache",
                      disable=not progress, leave=False):
        _, cache = model.run_with_cache(tokens[batch: batch + batch_size], sites)
        chunks.append(torch.stack([cache[s][:, pos].float().cpu() for s in sites]))
    return torch.cat(chunks, dim=1).transpose(1, 2).contiguous()


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


def _control_labels(y: np.ndarray, tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hewitt & Liang control: each token type at each position gets a label drawn from y.

    ``tokens`` is ``[prompt, pos]``; returns ``[pos, prompt]``.
    """
    table = rng.choice(y, size=int(tokens.max()) + 1)  # one label per token id, shared by positions
    return table[tokens].T


def _bootstrap(pred: np.ndarray, y: np.ndarray, kind: str, n_boot: int, rng) -> tuple:
    """Percentile 95% interval of the score over resampled held-out prompts (last axis)."""
    if n_boot < 1:
        nan = np.full(pred.shape[:-1], np.nan)
        return nan, nan
    idx = rng.integers(0, y.shape[-1], size=(n_boot, y.shape[-1]))
    yb = np.broadcast_to(y, pred.shape)[..., idx]
    s = _score(pred[..., idx], yb, kind)
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
    n_boot: int = 200,
    l2: float = 1e-3,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = True,
) -> ProbeResult:
    """Fit a linear probe for each (site, position, target) and score it on held-out prompts.

    Args:
        model: the model.
        prompts: a generated task of one token length (the answer follows the prompt).
        targets: frame columns of ``prompts`` (``"SC_2"``, ``"a_digit_0"``, ``"c_hat_3"``) or
            a dict name -> array of one value per prompt.
        sites: ``"resid"`` (resid_pre and resid_mid of every layer, then the final
            resid_post) or a list of whole-layer sites.
        positions: positions to probe (default: all).
        kind: ``"auto"`` (logistic for integer/bool targets with <= 20 values, ridge
            otherwise), ``"logistic"``, ``"ridge"`` or ``"circular"`` (one probe per period
            in ``periods``, named ``"<target> mod <T>"``).
        test_fraction: share of prompts held out.
        split: ``"random"``, or ``"operand"`` (no operand_a value in both train and test).
        control: also fit the Hewitt & Liang control task.
        n_boot: bootstrap resamples of the held-out prompts for ``ci_low``/``ci_high``.
        l2: probe penalty (see :class:`LinearProbe`).
        seed: seed of the split, the bootstrap and the control task.
        batch_size: prompts per forward pass.
        progress: show progress bars.
    """
    if kind not in get_args(FitKind):
        raise ProbeError(f"kind={kind!r}; valid kinds: {list(get_args(FitKind))}")
    if split not in get_args(Split):
        raise ProbeError(f"split={split!r}; valid splits: {list(get_args(Split))}")
    if not 0 < test_fraction < 1:
        raise ProbeError(f"test_fraction must be in (0, 1), got {test_fraction}")
    ys = _resolve_targets(prompts, targets)
    tokenized = tokenize(prompts, model.tokenizer, answer="multi")
    seq_len = tokenized.tokens.shape[1]
    positions = list(range(seq_len)) if positions is None else [int(p) for p in positions]
    bad = [p for p in positions if not -seq_len <= p < seq_len]
    if bad:
        raise ProbeError(f"positions {bad} are outside 0..{seq_len - 1}")
    positions = [p % seq_len for p in positions]
    if sites == "resid":
        site_list, labels = resid_sites(model)
    else:
        site_list = model.validate(list(sites))
        labels = [str(s) for s in site_list]
    train, test = split_prompts(prompts, test_fraction=test_fraction, split=split, seed=seed)

    acts = cache_resid(model, tokenized.tokens, site_list, positions, batch_size=batch_size,
                       progress=progress)
    X_train, X_test = acts[:, :, train].double(), acts[:, :, test].double()
    tokens = tokenized.tokens[:, positions].cpu().numpy()
    rng = np.random.default_rng(seed)

    names, kinds, rows = [], [], []
    jobs = []
    for name, y in ys.items():
        y = y.astype(np.int64) if y.dtype.kind == "b" else y
        k = _auto_kind(y) if kind == "auto" else kind
        if k == "circular":
            jobs += [(f"{name} mod {T}", y.astype(np.int64), k, int(T)) for T in periods]
        else:
            jobs.append((name, y, k, None))
    for name, y, k, period in tqdm(jobs, desc="probes: fit", disable=not progress, leave=False):
        rows.append(_fit_one(X_train, X_test, y, train, test, tokens, kind=k, period=period,
                             l2=l2, control=control, n_boot=n_boot, rng=rng))
        names.append(name)
        kinds.append("r2" if k == "ridge" else "accuracy")

    coords = {
        "target": np.array(names),
        "layer": np.arange(len(site_list)),
        "pos": np.array(positions),
        "score_kind": ("target", np.array(kinds)),
        "layer_label": ("layer", np.array(labels)),
        "pos_token": ("pos", np.array([tokenized.str_tokens[p] for p in positions])),
    }
    dims = ("target", "layer", "pos")
    values = xr.DataArray(np.stack([r["score"] for r in rows]), dims=dims, coords=coords)
    extras = {
        name: xr.DataArray(np.stack([r[name] for r in rows]), dims=dims, coords=coords)
        for name in ("ci_low", "ci_high", "control", "selectivity", "mae")
    }
    extras["majority"] = xr.DataArray(np.array([r["majority"] for r in rows]), dims=("target",),
                                      coords={"target": coords["target"]})
    options = {"targets": list(ys), "sites": labels, "positions": positions, "kind": kind,
               "periods": list(periods), "test_fraction": test_fraction, "split": split,
               "control": control, "n_boot": n_boot, "l2": l2, "batch_size": batch_size}
    meta = make_meta("fit_probes", model, prompts, options=options, seed=seed,
                     extra={"n_train": len(train), "n_test": len(test)})
    return ProbeResult(values=values, meta=meta, extras=extras)


def _fit_one(X_train, X_test, y, train, test, tokens, *, kind, period, l2, control, n_boot, rng):
    """Score of one target at every (site, pos): a dict of ``[site, pos]`` arrays."""
    y_eval = np.mod(y, period) if kind == "circular" else y
    score_kind = "ridge" if kind == "ridge" else "accuracy"
    probe = LinearProbe(kind, l2=l2, period=period).fit(X_train, y[train])
    pred = probe.predict(X_test)
    y_test = y_eval[test]
    out = {"score": _score(pred, np.broadcast_to(y_test, pred.shape), score_kind)}
    out["ci_low"], out["ci_high"] = _bootstrap(pred, y_test, score_kind, n_boot, rng)
    nan = np.full(out["score"].shape, np.nan)
    out["mae"] = np.abs(pred - y_test).mean(-1) if kind == "ridge" else nan
    if kind == "ridge":
        out["majority"] = float(_score(np.full(len(test), y[train].mean()), y_test, "ridge"))
    else:
        values, counts = np.unique(y_eval[train], return_counts=True)
        out["majority"] = float((y_test == values[counts.argmax()]).mean())
    out["control"], out["selectivity"] = nan, nan
    if control:
        y_ctrl = _control_labels(y, tokens, rng)  # [pos, prompt]
        ctrl = _fit_control(X_train, X_test, y_ctrl, train, test, kind=kind, period=period, l2=l2)
        out["control"] = ctrl
        out["selectivity"] = out["score"] - ctrl
    return out


def _fit_control(X_train, X_test, y_ctrl, train, test, *, kind, period, l2) -> np.ndarray:
    """Fit the control task; positions whose control labels are constant score 1 (trivial)."""
    score_kind = "ridge" if kind == "ridge" else "accuracy"
    n_sites, n_pos = X_train.shape[:2]
    out = np.ones((n_sites, n_pos))
    y_eval = np.mod(y_ctrl, period) if kind == "circular" else y_ctrl
    varied = [p for p in range(n_pos) if len(np.unique(y_eval[p, train])) > 1]
    if not varied:
        return out
    # positions differ in their control labels, so the fit is batched over (pos, site)
    y_fit = np.broadcast_to(y_ctrl[varied][:, None, train], (len(varied), n_sites, len(train)))
    Xtr = X_train[:, varied].transpose(0, 1)
    probe = LinearProbe(kind, l2=l2, period=period).fit(Xtr, y_fit)
    pred = probe.predict(X_test[:, varied].transpose(0, 1))
    truth = np.broadcast_to(y_eval[varied][:, None, test], pred.shape)
    out[:, varied] = _score(pred, truth, score_kind).T
    return out
