"""Linear probes on the residual stream, one per (site, position, target), fitted at once.

:class:`LinearProbe` follows scikit-learn's conventions (hyperparameters in
``__init__``, ``fit(X, y) -> self``, learned state in ``coef_``,
``intercept_``, ``classes_``) but is batched: ``X`` of shape ``[..., n, d]``
holds many independent problems (one per layer and position) that are
fitted in one call. Features are standardised per problem, as a scikit-learn
``StandardScaler`` would.

Problems are processed in chunks of a few MB, so each chunk's iterations run
on data in the CPU cache.

- ``ridge``: one batched closed-form solve ``(X'X + l2 n I) W = X'y`` per chunk
  (Gram matrix in float32, float64 answer by iterative refinement).
- ``logistic``, loss ``mean CE + l2/2 |W|^2`` per problem (scikit-learn's
  ``C = 1 / (l2 n)``): two classes by damped Newton with per-problem Armijo line
  search, stopping on the Newton decrement and reusing a Hessian while it still
  gives fast full steps; more classes by full-batch L-BFGS on all problems
  together (they are independent, so minimising the sum minimises each).
- ``circular``: ridge onto ``(cos, sin)(2 pi x / period)``; predicts ``x mod period``
  from the angle of the prediction, scored by accuracy.

:func:`fit_probes` caches the residual stream of a model on a
:class:`~arithinterp.tasks.PromptSet`, fits probes for task annotations
(carry bits ``SC_i``, operand digits, running sums ``c_hat_k``...) and scores
them on held-out prompts, with bootstrap intervals, a majority baseline and a
Hewitt & Liang (2019) control task: each input *type* gets a fixed random label
drawn from the target's label distribution. For arithmetic the type is what a
probe could memorise: by default the operand digits the target is a function of
(``a_digit_2, b_digit_2`` for the carry ``SC_2``; :func:`control_columns`). The
control is memorisable from the type but means nothing, so
``selectivity = score - control`` separates what the probe reads from the
stream from what it could memorise.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
import xarray as xr
from plotly.subplots import make_subplots
from tqdm.auto import tqdm

from arithinterp.errors import ArithInterpError
from arithinterp.methods._common import make_meta
from arithinterp.models import Model, Site
from arithinterp.models.site import site_depth
from arithinterp.results import Result
from arithinterp.tasks import PromptSet, tokenize

ProbeKind = Literal["logistic", "ridge", "circular"]
FitKind = Literal["auto", "logistic", "ridge", "circular"]
Split = Literal["random", "operand"]
ControlBy = Literal["auto", "operands", "token"]
_MAX_CLASSES = 20


class ProbeError(ArithInterpError, ValueError):
    """A probe was asked for something it cannot do (unknown target, bad option)."""


def _as_tensor(x, dtype=torch.float64) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _as_float_tensor(x) -> torch.Tensor:
    """``x`` as a CPU tensor, keeping float32/float64 (no copy of a large float32 input)."""
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t if t.dtype in (torch.float32, torch.float64) else t.to(torch.float64)


# Problems are fitted in chunks of about this many bytes of float64 features, so that a
# chunk's Newton iterations read data that stays in the CPU cache instead of streaming
# every problem from memory on every iteration.
_CHUNK_BYTES = 4 << 20
_MAX_CHUNK = 64


def _chunk_size(n: int, d: int) -> int:
    return int(min(_MAX_CHUNK, max(1, _CHUNK_BYTES // (8 * n * (d + 1)))))


def _standardised_t(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features of a chunk ``x [c, n, d]`` standardised and transposed, with a row of ones.

    Returns ``Zt [c, d + 1, n]`` (float64; row ``d`` is the intercept's constant), the mean
    and the scale ``[c, d]`` (a constant feature keeps scale 1, as scikit-learn's
    ``StandardScaler``)."""
    c, n, d = x.shape
    x = x.to(torch.float64)
    mean = x.mean(1, keepdim=True)
    zt = torch.empty(c, d + 1, n, dtype=torch.float64)
    centred = torch.sub(x, mean, out=zt[:, :d].transpose(1, 2))
    std = centred.pow(2).mean(1, keepdim=True).sqrt_()
    scale = torch.where(std > 1e-12, std, torch.ones_like(std))
    centred.div_(scale)
    zt[:, d] = 1.0
    return zt, mean.squeeze(1), scale.squeeze(1)


def _zt_mv(zt: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``zt [c, d1, n] @ r [c, n, k]`` as ``c * k`` matrix-vector products (for this
    layout they are several times faster than one bmm)."""
    out = torch.empty(zt.shape[0], zt.shape[1], r.shape[2], dtype=zt.dtype)
    for i in range(zt.shape[0]):
        for j in range(r.shape[2]):
            torch.mv(zt[i], r[i, :, j], out=out[i, :, j])
    return out


def _inverse_spd(h: torch.Tensor) -> torch.Tensor:
    """Inverse of a batch of symmetric positive definite matrices (jitter where Cholesky fails)."""
    chol, info = torch.linalg.cholesky_ex(h)
    if bool((info > 0).any()):
        jitter = 1e-8 * h.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
        h = h + jitter[:, None, None] * torch.eye(h.shape[-1], dtype=h.dtype)
        chol = torch.linalg.cholesky(h)
    return torch.cholesky_inverse(chol)


def _ridge_chunk(zt: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Solve ``(Z'Z + diag(alpha)) W = Z'Y`` for a chunk: ``zt [c, d1, n]``, ``y [c, n, k]``.

    The Gram matrix is formed in float32 (its one costly product) and the float64 answer
    recovered by iterative refinement with exact float64 residuals."""
    z32 = zt.float()
    gram = torch.bmm(z32, z32.transpose(1, 2)).double() + torch.diag(alpha)
    inv = _inverse_spd(gram)
    rhs = _zt_mv(zt, y)
    w = torch.bmm(inv, rhs)
    scale = rhs.abs().amax(dim=(1, 2)).clamp_min(1e-300)
    for _ in range(5):  # each round gains the float32 Gram's relative accuracy (~1e-3 or better)
        fitted = torch.bmm(w.transpose(1, 2), zt).transpose(1, 2)  # Z w, [c, n, k]
        resid = rhs - _zt_mv(zt, fitted) - alpha[:, None] * w
        if bool((resid.abs().amax(dim=(1, 2)) <= 1e-11 * scale).all()):
            break
        w = w + torch.bmm(inv, resid)
    return w


def _newton_chunk(
    zt: torch.Tensor, t: torch.Tensor, pen: torch.Tensor, *, tol: float, max_iter: int
) -> tuple[torch.Tensor, int]:
    """Minimise ``mean BCE(Z w, t) + 1/2 sum(pen w^2)`` for each problem of a chunk.

    ``zt [c, d1, n]`` float64, ``t [c, n]`` in {0, 1}. Damped Newton with an Armijo line
    search; a problem stops when its squared Newton decrement ``g' H^-1 g`` is below
    ``tol``. The Hessian (formed in float32: it only steers, the gradient and the loss
    are float64) is refreshed per problem only when the previous one stops giving full
    steps that shrink the decrement tenfold; otherwise it is reused. Returns the weights
    ``[c, d1]`` and the number of Hessians formed.
    """
    c, d1, n = zt.shape
    z32 = zt.float()
    w = torch.zeros(c, d1, dtype=torch.float64)
    logits = torch.zeros(c, n, dtype=torch.float64)
    grad = torch.empty(c, d1, dtype=torch.float64)
    current = torch.full((c,), math.log(2.0), dtype=torch.float64)
    h_inv = torch.empty(c, d1, d1, dtype=torch.float64)
    ridge = torch.diag(pen + 1e-10)
    refresh = torch.ones(c, dtype=torch.bool)
    previous = None
    n_hessians = 0
    for _ in range(max_iter):
        p = torch.sigmoid(logits)
        resid = p - t
        for i in range(c):  # c matrix-vector products beat one bmm with this layout
            torch.mv(zt[i], resid[i], out=grad[i])
        grad.div_(n).add_(pen * w)
        if bool(refresh.any()):
            idx = refresh.nonzero().squeeze(1)
            zs = z32[idx]
            weight = (p[idx] * (1 - p[idx])).float().unsqueeze(1)
            hess = torch.bmm(zs * weight, zs.transpose(1, 2)).double().div_(n).add_(ridge)
            h_inv[idx] = _inverse_spd(hess)
            n_hessians += len(idx)
        step = torch.bmm(h_inv, grad.unsqueeze(-1)).squeeze(-1)
        decrement = (grad * step).sum(-1)
        live = decrement > tol
        if not bool(live.any()):
            break
        dz = torch.bmm(step.unsqueeze(1), zt).squeeze(1)
        scale = live.to(torch.float64)  # converged problems stay put
        for _ in range(40):  # halve each problem's step until its loss goes down enough
            trial = (
                F.binary_cross_entropy_with_logits(logits - scale[:, None] * dz, t, reduction="none").mean(-1)
                + 0.5 * (pen * (w - scale[:, None] * step) ** 2).sum(-1)
            )
            worse = (trial > current - 1e-4 * scale * decrement) & live
            if not bool(worse.any()):
                break
            scale = torch.where(worse, scale / 2, scale)
        else:  # a problem that cannot improve (at its optimum to rounding) stays put
            scale = torch.where(worse, torch.zeros_like(scale), scale)
            trial = torch.where(worse, current, trial)
        w -= scale[:, None] * step
        logits -= scale[:, None] * dz
        current = trial
        refresh = live & (scale < 1)
        if previous is not None:
            refresh |= live & (decrement > 0.1 * previous)
        previous = decrement
    return w, n_hessians


class LinearProbe:
    """A batched linear probe with scikit-learn conventions.

    Args:
        kind: ``"logistic"`` (classes), ``"ridge"`` (real values) or ``"circular"``
            (residue ``x mod period`` through its angle).
        l2: penalty; ridge ``alpha = l2 * n``, logistic ``C = 1 / (l2 * n)``.
        max_iter: Newton (binary) or L-BFGS (multiclass) iterations.
        lr: L-BFGS step size (multiclass logistic; a strong-Wolfe line search scales it).
        seed: kept for scikit-learn conformance; the fit is deterministic.
        period: the period of a circular probe.
        tol: convergence tolerance: the squared Newton decrement ``g' H^-1 g`` of the
            binary logistic loss (``1e-12``: at most ``5e-13`` above the optimum).

    Learned: ``mean_``, ``scale_`` (standardisation, ``[..., d]``), ``coef_``
    (``[..., d, k]``; ``k`` classes, 1 output for ridge on ``[n]`` targets, 2 for
    circular), ``intercept_`` (``[..., k]``), ``classes_`` (logistic), ``n_hessians_``
    (binary logistic: Hessians formed, over all problems).
    """

    def __init__(
        self,
        kind: ProbeKind = "logistic",
        l2: float = 1e-3,
        max_iter: int = 200,
        lr: float = 1.0,
        seed: int = 0,
        period: int | None = None,
        tol: float = 1e-12,
    ):
        self.kind = kind
        self.l2 = l2
        self.max_iter = max_iter
        self.lr = lr
        self.seed = seed
        self.period = period
        self.tol = tol

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in ("kind", "l2", "max_iter", "lr", "seed", "period", "tol")}

    def __repr__(self) -> str:
        return f"LinearProbe({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    def _check(self) -> None:
        if self.kind not in get_args(ProbeKind):
            raise ProbeError(f"kind={self.kind!r}; valid kinds: {list(get_args(ProbeKind))}")
        if self.kind == "circular" and (self.period is None or self.period < 2):
            raise ProbeError("a circular probe needs period >= 2, e.g. LinearProbe('circular', period=10)")
        if self.l2 < 0:
            raise ProbeError(f"l2 must be >= 0, got {self.l2}")
        if self.tol <= 0:
            raise ProbeError(f"tol must be > 0, got {self.tol}")

    def _standardise(self, X: torch.Tensor) -> torch.Tensor:
        return (X - self.mean_.unsqueeze(-2)) / self.scale_.unsqueeze(-2)

    def fit(self, X, y) -> LinearProbe:
        """Fit every problem in ``X [..., n, d]`` against ``y [n]`` or ``[..., n]``."""
        self._check()
        X = _as_float_tensor(X)
        if X.ndim < 2:
            raise ProbeError(f"X must be [..., n, d], got shape {tuple(X.shape)}")
        n = X.shape[-2]
        y_np = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)
        if y_np.shape[-1] != n:
            raise ProbeError(f"y has {y_np.shape[-1]} samples, X has {n}")
        if self.kind == "logistic":
            self.classes_ = np.unique(y_np)
            if len(self.classes_) < 2:
                raise ProbeError(f"a logistic probe needs at least 2 classes, y has {self.classes_}")
            idx = torch.as_tensor(np.searchsorted(self.classes_, y_np)).expand(X.shape[:-1])
            if len(self.classes_) == 2:
                self._fit_chunked(X, idx.to(torch.float64), "binary")
            else:
                self._fit_multiclass(X, idx)
            return self
        target = _as_tensor(y_np)
        if self.kind == "circular":
            angle = 2 * math.pi * target / self.period
            target = torch.stack([angle.cos(), angle.sin()], -1)
        else:
            target = target.unsqueeze(-1)
        self._fit_chunked(X, target.expand(*X.shape[:-1], target.shape[-1]), "ridge")
        return self

    def _fit_chunked(self, X: torch.Tensor, target: torch.Tensor, how: str) -> None:
        """Binary logistic (``target [..., n]`` in {0, 1}) or ridge (``target [..., n, k]``),
        problem chunk by problem chunk; each chunk is one batched solve."""
        batch, (n, d) = X.shape[:-2], X.shape[-2:]
        flat_x = X.reshape(-1, n, d)
        flat_t = target.reshape(flat_x.shape[0], n, *target.shape[len(batch) + 1:]).to(torch.float64)
        size = flat_x.shape[0]
        k = 1 if how == "binary" else flat_t.shape[-1]
        w = torch.empty(size, d + 1, k, dtype=torch.float64)
        mean = torch.empty(size, d, dtype=torch.float64)
        scale = torch.empty(size, d, dtype=torch.float64)
        pen = torch.full((d + 1,), float(self.l2), dtype=torch.float64)
        pen[d] = 0.0  # the intercept is not penalised
        step = _chunk_size(n, d)
        self.n_hessians_ = 0
        for start in range(0, size, step):
            part = slice(start, start + step)
            zt, mean[part], scale[part] = _standardised_t(flat_x[part])
            if how == "binary":
                wc, n_hess = _newton_chunk(zt, flat_t[part], pen, tol=self.tol, max_iter=self.max_iter)
                w[part] = wc.unsqueeze(-1)
                self.n_hessians_ += n_hess
            else:
                w[part] = _ridge_chunk(zt, flat_t[part], pen * n)
        self.mean_, self.scale_ = mean.reshape(*batch, d), scale.reshape(*batch, d)
        coef, intercept = w[:, :d].reshape(*batch, d, k), w[:, d].reshape(*batch, k)
        if how == "binary":  # softmax form: logit difference = w.x + b
            self.coef_ = torch.cat([-coef / 2, coef / 2], -1)
            self.intercept_ = torch.cat([-intercept / 2, intercept / 2], -1)
        else:
            self.coef_, self.intercept_ = coef, intercept

    def _fit_multiclass(self, X: torch.Tensor, idx: torch.Tensor) -> None:
        """Softmax regression, full-batch L-BFGS on all problems together (they are
        independent, so minimising the sum minimises each)."""
        X = X.to(torch.float64)
        self.mean_ = X.mean(-2)
        std = X.std(-2, unbiased=False)
        self.scale_ = torch.where(std > 1e-12, std, torch.ones_like(std))
        Z = self._standardise(X)
        n, d = Z.shape[-2:]
        k = len(self.classes_)
        W = torch.zeros(*Z.shape[:-2], d, k, dtype=Z.dtype)
        b = torch.zeros(*Z.shape[:-2], k, dtype=Z.dtype)
        opt = torch.optim.LBFGS(
            [W, b], lr=self.lr, max_iter=self.max_iter, tolerance_grad=1e-9,
            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe",
        )

        onehot = F.one_hot(idx, k).to(Z.dtype)
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

    def decision_function(self, X) -> torch.Tensor:
        """Raw outputs ``[..., m, k]`` (logits, or ridge/circular predictions)."""
        if not hasattr(self, "coef_"):
            raise ProbeError("this LinearProbe is not fitted yet; call fit(X, y) first")
        X = _as_tensor(X)
        # fold the standardisation into the weights: one pass over X instead of a copy
        coef = self.coef_ / self.scale_.unsqueeze(-1)
        intercept = self.intercept_ - (self.mean_.unsqueeze(-2) @ coef).squeeze(-2)
        if X.ndim < 2 or X.shape[:-2] != coef.shape[:-2] or coef.shape[-1] > 4:
            return X @ coef + intercept.unsqueeze(-2)
        m, d = X.shape[-2:]
        flat_x = X.reshape(-1, m, d)
        flat_c = coef.reshape(-1, d, coef.shape[-1]).transpose(1, 2).contiguous()
        out = torch.empty(flat_x.shape[0], m, flat_c.shape[1], dtype=X.dtype)
        for i in range(flat_x.shape[0]):  # matrix-vector products: much faster than bmm here
            for j in range(flat_c.shape[1]):
                torch.mv(flat_x[i], flat_c[i, j], out=out[i, :, j])
        return out.reshape(*X.shape[:-1], -1) + intercept.unsqueeze(-2)

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

    ``values``: dims ``(target, site, pos)``: accuracy for logistic and circular
    targets, R² for ridge targets (coordinate ``score_kind`` on ``target``).
    ``site`` holds the probed sites' labels in depth order (``"L0 pre"`` =
    embeddings, ``"L0 mid"`` = after layer-0 attention, ..., ``"L1 post"`` =
    final stream), with coordinate ``layer``: the depth as on a lens axis
    (``L1 pre`` and ``L1 mid`` are at 1, ``L1 post`` of a 2-layer model at 2);
    ``pos_token`` labels ``pos``. Extras: ``ci_low``/``ci_high`` (bootstrap over held-out prompts),
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
        y = [str(v) for v in self.values.coords["site"].values]
        for i, target in enumerate(targets, start=1):
            z = self.values.isel(target=i - 1).transpose("site", "pos").values
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


# --------------------------------------------------------------------------------------------
# Fitting probes on a model


def resid_sites(model: Model) -> tuple[list[Site], list[str]]:
    """``resid_pre`` and ``resid_mid`` of every layer, then the final ``resid_post``."""
    n = model.shape.n_layers
    sites = [Site(kind, layer) for layer in range(n) for kind in ("resid_pre", "resid_mid")]
    sites.append(Site("resid_post", n - 1))
    return sites, [s.label for s in sites]


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
    """``control_by="token"``: each token id gets one label drawn from y, shared by positions.

    ``tokens`` is ``[prompt, pos]``; returns ``[pos, prompt]``.
    """
    table = rng.choice(y, size=int(tokens.max()) + 1)
    return table[tokens].T


_DIGIT_COLUMN = re.compile(r"^[ab]_digit_\d+$")
_MIN_PER_TYPE = 4  # a type must recur this often on average, or its label cannot be memorised


def control_columns(frame, y: np.ndarray, *, max_size: int = 3) -> list[str]:
    """The operand digits a target is a function of: the input *type* of its control task.

    Searches subsets of the operand digit columns (``a_digit_i``, ``b_digit_j``), smallest
    first, for one on which ``y`` is a deterministic function and whose value tuples recur
    (at most ``len(y) / 4`` distinct tuples); ties go to fewer distinct tuples. Carry bit
    ``SC_2`` of an addition gives ``["a_digit_2", "b_digit_2"]``; a target no small subset
    determines (a cascading carry, the answer) gives ``["operand_a", "operand_b"]``.
    """
    digits = [c for c in frame.columns if _DIGIT_COLUMN.match(str(c))]
    codes = {c: frame[c].to_numpy().astype(np.int64) for c in digits}
    _, y_code = np.unique(y, return_inverse=True)
    for size in range(1, max_size + 1):
        found = []
        for cols in itertools.combinations(digits, size):
            key = np.zeros(len(y), dtype=np.int64)
            for c in cols:
                key = key * 10 + codes[c]
            types, inverse = np.unique(key, return_inverse=True)
            if len(types) * _MIN_PER_TYPE > len(y):
                continue
            first = np.zeros(len(types), dtype=np.int64)
            first[inverse[::-1]] = y_code[::-1]  # one label per type (any occurrence)
            if np.array_equal(first[inverse], y_code):
                found.append((len(types), list(cols)))
        if found:
            return min(found, key=lambda f: f[0])[1]
    return [c for c in ("operand_a", "operand_b") if c in frame.columns]


def _type_ids(frame, columns: Sequence[str]) -> np.ndarray:
    """One integer per prompt for the tuple of values in ``columns``."""
    if not columns:
        raise ProbeError("the control task needs at least one column to define input types")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ProbeError(f"control columns {missing} are not columns of the prompt set; "
                         f"columns: {list(frame.columns)}")
    values = np.stack([frame[c].to_numpy() for c in columns], axis=1)
    return np.unique(values, axis=0, return_inverse=True)[1].reshape(-1)


def _type_control_labels(y: np.ndarray, types: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hewitt & Liang's control task: each input type gets a fixed label drawn from ``y``'s
    empirical distribution; every prompt of that type carries it. ``[prompt]``."""
    return rng.choice(y, size=int(types.max()) + 1)[types]


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
    control_by: ControlBy | Sequence[str] | Mapping[str, Sequence[str]] = "auto",
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
        progress: show progress bars.
    """
    if kind not in get_args(FitKind):
        raise ProbeError(f"kind={kind!r}; valid kinds: {list(get_args(FitKind))}")
    if split not in get_args(Split):
        raise ProbeError(f"split={split!r}; valid splits: {list(get_args(Split))}")
    if not 0 < test_fraction < 1:
        raise ProbeError(f"test_fraction must be in (0, 1), got {test_fraction}")
    ys = _resolve_targets(prompts, targets)
    control_cols = _control_plan(prompts, ys, control_by) if control else {}
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
        labels = [s.label for s in site_list]
        if len(set(labels)) != len(labels):  # labels index the result's site axis
            raise ProbeError(f"sites repeat: {labels}")
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
        base = name.split(" mod ")[0] if period else name
        cols = control_cols.get(base)
        types = None if cols is None or cols == "token" else _type_ids(prompts.frame, cols)
        rows.append(_fit_one(X_train, X_test, y, train, test, tokens, kind=k, period=period,
                             l2=l2, control=control, types=types, n_boot=n_boot, rng=rng))
        names.append(name)
        kinds.append("r2" if k == "ridge" else "accuracy")

    coords = {
        "target": np.array(names),
        "site": np.array(labels),
        "pos": np.array(positions),
        "score_kind": ("target", np.array(kinds)),
        "layer": ("site", np.array([site_depth(s, model.shape.n_layers) for s in site_list])),
        "pos_token": ("pos", np.array([tokenized.str_tokens[p] for p in positions])),
    }
    dims = ("target", "site", "pos")
    values = xr.DataArray(np.stack([r["score"] for r in rows]), dims=dims, coords=coords)
    extras = {
        name: xr.DataArray(np.stack([r[name] for r in rows]), dims=dims, coords=coords)
        for name in ("ci_low", "ci_high", "control", "selectivity", "mae")
    }
    extras["majority"] = xr.DataArray(np.array([r["majority"] for r in rows]), dims=("target",),
                                      coords={"target": coords["target"]})
    options = {"targets": list(ys), "sites": labels, "positions": positions, "kind": kind,
               "periods": list(periods), "test_fraction": test_fraction, "split": split,
               "control": control, "control_by": control_by if isinstance(control_by, str)
               else (dict(control_by) if isinstance(control_by, Mapping) else list(control_by)),
               "n_boot": n_boot, "l2": l2, "batch_size": batch_size}
    meta = make_meta("fit_probes", model, prompts, options=options, seed=seed,
                     extra={"n_train": len(train), "n_test": len(test),
                            "control_columns": control_cols})
    return ProbeResult(values=values, meta=meta, extras=extras)


def _control_plan(prompts: PromptSet, ys: dict[str, np.ndarray], control_by) -> dict:
    """Per target, the frame columns whose value tuple is the control task's input type
    (or ``"token"``)."""
    if isinstance(control_by, str):
        if control_by not in get_args(ControlBy):
            raise ProbeError(f"control_by={control_by!r}; valid: {list(get_args(ControlBy))}, "
                             "a list of columns, or a dict target -> columns")
        if control_by == "auto":
            return {name: control_columns(prompts.frame, y) for name, y in ys.items()}
        if control_by == "operands":
            return {name: ["operand_a", "operand_b"] for name in ys}
        return {name: "token" for name in ys}
    if isinstance(control_by, Mapping):
        unknown = set(control_by) - set(ys)
        if unknown:
            raise ProbeError(f"control_by names targets {sorted(unknown)} that are not probed: {list(ys)}")
        plan = {name: control_columns(prompts.frame, y) for name, y in ys.items()}
        plan.update({name: list(cols) for name, cols in control_by.items()})
    else:
        plan = {name: list(control_by) for name in ys}
    for cols in plan.values():
        _type_ids(prompts.frame, cols)  # unknown columns fail here, before any forward pass
    return plan


def _fit_one(X_train, X_test, y, train, test, tokens, *, kind, period, l2, control, types, n_boot, rng):
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
    if control and types is not None:
        y_ctrl = _type_control_labels(y, types, rng)
        ctrl = _fit_type_control(X_train, X_test, y_ctrl, train, test, kind=kind, period=period, l2=l2)
        out["control"] = ctrl
        out["selectivity"] = out["score"] - ctrl
    elif control:
        y_ctrl = _control_labels(y, tokens, rng)  # [pos, prompt]
        ctrl = _fit_control(X_train, X_test, y_ctrl, train, test, kind=kind, period=period, l2=l2)
        out["control"] = ctrl
        out["selectivity"] = out["score"] - ctrl
    return out


def _fit_type_control(X_train, X_test, y_ctrl, train, test, *, kind, period, l2) -> np.ndarray:
    """Score of the control task (labels ``[prompt]``) at every (site, pos)."""
    score_kind = "ridge" if kind == "ridge" else "accuracy"
    y_eval = np.mod(y_ctrl, period) if kind == "circular" else y_ctrl
    if len(np.unique(y_eval[train])) < 2:  # one label: the control is trivially "learned"
        const = np.full(len(test), y_eval[train][0])
        return np.full(X_train.shape[:2], float(_score(const, y_eval[test], score_kind)))
    probe = LinearProbe(kind, l2=l2, period=period).fit(X_train, y_ctrl[train])
    pred = probe.predict(X_test)
    return _score(pred, np.broadcast_to(y_eval[test], pred.shape), score_kind)


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
