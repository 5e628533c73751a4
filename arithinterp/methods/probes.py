"""The linear probe estimator: many independent problems fitted in one call.

:class:`LinearProbe` follows scikit-learn's conventions (hyperparameters in
``__init__``, ``fit(X, y) -> self``, learned state in ``coef_``,
``intercept_``, ``classes_``) but is batched: ``X`` of shape ``[..., n, d]``
holds many independent problems (one per layer and position) that are
fitted in one call. Features are standardised per problem, as a scikit-learn
``StandardScaler`` would.

Problems are processed in chunks of a few MB, so each chunk's iterations run
on data in the CPU cache.

- ``ridge``: one batched closed-form solve ``(Z'Z + l2 n I) W = Z'y`` per chunk, as
  scikit-learn's ``Ridge`` solves it (float64 Gram matrix, Cholesky) but with the
  standardisation folded into the Gram matrix of the centred features and one
  factorisation per problem shared by all its targets.
- ``logistic``, loss ``mean CE + l2/2 |W|^2`` per problem (scikit-learn's
  ``C = 1 / (l2 n)``): two classes by damped Newton with per-problem Armijo line
  search, stopping on the Newton decrement and reusing a Hessian while it still
  gives fast full steps; more classes by full-batch L-BFGS on all problems
  together (they are independent, so minimising the sum minimises each).
- ``circular``: ridge onto ``(cos, sin)(2 pi x / period)``; predicts ``x mod period``
  from the angle of the prediction, scored by accuracy.

The sweep over a model's residual stream (:func:`~arithinterp.methods.probe_sweep.fit_probes`)
lives in :mod:`arithinterp.methods.probe_sweep`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.metrics import r2_score
from sklearn.utils import ClassifierTags, RegressorTags, Tags
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data

from arithinterp.errors import ArithInterpError
from arithinterp.methods.ridge import blas_threads, chunk_size, ridge_buffers, ridge_chunk

__all__ = ["LinearProbe", "ProbeError", "ProbeKind", "ProbeNotFittedError", "fit_ridge_targets", "score_predictions"]

ProbeKind = Literal["logistic", "ridge", "circular"]


class ProbeError(ArithInterpError, ValueError):
    """A probe was asked for something it cannot do (unknown target, bad option)."""


def _as_tensor(x, dtype=torch.float64) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", dtype)
    return torch.as_tensor(np.require(np.asarray(x), requirements=["W"]), dtype=dtype)


def _as_float_tensor(x) -> torch.Tensor:
    """``x`` as a CPU tensor, keeping float32/float64 (no copy of a large float32 input)."""
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(
        np.require(np.asarray(x), requirements=["W"]))  # a read-only array (memmap) is copied
    return t if t.dtype in (torch.float32, torch.float64) else t.to(torch.float64)


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


def _inverse_spd(h: torch.Tensor) -> torch.Tensor:
    """Inverse of a batch of symmetric positive definite matrices (jitter where Cholesky fails)."""
    chol, info = torch.linalg.cholesky_ex(h)
    if bool((info > 0).any()):
        jitter = 1e-8 * h.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
        h = h + jitter[:, None, None] * torch.eye(h.shape[-1], dtype=h.dtype)
        chol = torch.linalg.cholesky(h)
    return torch.cholesky_inverse(chol)


def _newton_chunk(
    zt: torch.Tensor, t: torch.Tensor, pen: torch.Tensor, *, tol: float, max_iter: int
) -> tuple[torch.Tensor, int, int]:
    """Minimise ``mean BCE(Z w, t) + 1/2 sum(pen w^2)`` for each problem of a chunk.

    ``zt [c, d1, n]`` float64, ``t [c, n]`` in {0, 1}. Damped Newton with an Armijo line
    search; a problem stops when its squared Newton decrement ``g' H^-1 g`` is below
    ``tol``. The Hessian (formed in float32: it only steers, the gradient and the loss
    are float64) is refreshed per problem only when the previous one stops giving full
    steps that shrink the decrement tenfold; otherwise it is reused. Returns the weights
    ``[c, d1]``, the number of Hessians formed and the number of Newton iterations.
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
    n_hessians = iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007  (the count is returned)
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
    return w, n_hessians, iterations


class ProbeNotFittedError(ProbeError, NotFittedError):
    """A probe used before ``fit``: both an ``ArithInterpError`` and scikit-learn's
    ``NotFittedError``."""


def _batched(X) -> bool:
    """Whether ``X`` takes the batched path: a torch tensor, or more than two dims."""
    return isinstance(X, torch.Tensor) or (hasattr(X, "ndim") and X.ndim > 2)


class LinearProbe(BaseEstimator):
    """A batched linear probe that is a scikit-learn estimator.

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

    Two ways in:

    - **one problem**, ``X [n, d]`` (array-like, a DataFrame...): validated as scikit-learn
      validates (NaN, shapes, feature counts and names, label types), so the probe works in
      ``cross_val_score``, pipelines and grid searches and passes
      ``sklearn.utils.estimator_checks.check_estimator`` (for ``"logistic"`` and ``"ridge"``;
      see ``tests/methods/test_probe_estimator.py`` for the checks a ``"circular"`` probe
      cannot meet);
    - **many problems at once**, ``X [..., n, d]`` with more dims, or any torch tensor (the
      fast path :func:`~arithinterp.methods.probe_sweep.fit_probes` uses): one problem per
      leading index, against ``y [n]`` or ``[..., n]``, fitted in one call.

    Learned (numpy arrays; ``...`` is the problems' shape, empty for one problem):
    ``coef_`` the directions in the input space, so ``X @ coef_.T + intercept_`` is the
    decision: ``[..., 1, d]`` for two classes (the logit of ``classes_[1]`` over
    ``classes_[0]``), ``[..., k, d]`` for ``k`` classes, ``[..., d]`` for ridge, ``[..., 2, d]``
    (cos, sin) for circular; ``intercept_`` the matching ``[..., 1]``, ``[..., k]``, ``[...]``
    (a float for one ridge problem) or ``[..., 2]``; ``classes_`` (``arange(period)`` for
    circular); ``mean_`` and ``scale_`` ``[..., d]`` (the standardisation the penalty was
    applied under, folded into ``coef_``); ``n_features_in_``; ``n_iter_`` (Newton or L-BFGS
    iterations, the most any problem took; 1 for the closed-form ridge); ``n_hessians_``
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

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        if self.kind == "ridge":
            tags.estimator_type, tags.regressor_tags = "regressor", RegressorTags()
        else:
            tags.estimator_type, tags.classifier_tags = "classifier", ClassifierTags()
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "coef_")

    def _check(self) -> None:
        if self.kind not in get_args(ProbeKind):
            raise ProbeError(f"kind={self.kind!r}; valid kinds: {list(get_args(ProbeKind))}")
        if self.kind == "circular" and (self.period is None or self.period < 2):
            raise ProbeError("a circular probe needs period >= 2, e.g. LinearProbe('circular', period=10)")
        if self.l2 < 0:
            raise ProbeError(f"l2 must be >= 0, got {self.l2}")
        if self.tol <= 0:
            raise ProbeError(f"tol must be > 0, got {self.tol}")

    # -- fitting ---------------------------------------------------------------------------

    def fit(self, X, y) -> LinearProbe:
        """Fit one problem ``X [n, d]`` or every problem in ``X [..., n, d]`` against ``y``."""
        self._check()
        if _batched(X):
            X = _as_float_tensor(X)
            if X.ndim < 2:
                raise ProbeError(f"X must be [..., n, d], got shape {tuple(X.shape)}")
            y_np = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)
            if y_np.ndim == 0 or y_np.shape[-1] != X.shape[-2]:
                raise ProbeError(f"y has shape {y_np.shape}; X has {X.shape[-2]} samples")
            self.n_features_in_ = int(X.shape[-1])
        else:
            X, y_np = validate_data(self, X, y, dtype=[np.float64, np.float32],
                                    y_numeric=self.kind == "ridge")
            if self.kind != "ridge":
                check_classification_targets(y_np)
            if self.kind == "circular" and y_np.dtype.kind not in "iubf":
                raise ProbeError(f"a circular probe decodes residues of integer targets; y has "
                                 f"dtype {y_np.dtype}")
            X = torch.from_numpy(np.require(X, requirements=["W"]))
        if self.kind == "logistic":
            self._fit_logistic(X, y_np)
            return self
        target = _as_tensor(y_np)
        if self.kind == "circular":
            self.classes_ = np.arange(self.period)
            angle = 2 * math.pi * target / self.period
            target = torch.stack([angle.cos(), angle.sin()], -1)
        else:
            target = target.unsqueeze(-1)
        w, mean, scale = self._fit_ridge(X, target.expand(*X.shape[:-1], target.shape[-1]))
        self._set_weights(w, mean, scale)
        return self

    def _fit_logistic(self, X: torch.Tensor, y: np.ndarray) -> None:
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ProbeError(
                f"a logistic probe needs at least 2 classes; y has 1 class: {self.classes_.tolist()}"
            )
        idx = torch.as_tensor(np.searchsorted(self.classes_, y)).expand(X.shape[:-1])
        if len(self.classes_) == 2:
            w, mean, scale = self._fit_chunked(X, idx.to(torch.float64))
        else:
            w, mean, scale = self._fit_multiclass(X, idx)
        self._set_weights(w, mean, scale)

    def _set_weights(self, w: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> None:
        """Learned state from weights ``w [..., d + 1, k]`` (the last row the intercept) on
        standardised features: the directions in the input space, as numpy."""
        coef = w[..., :-1, :] / scale.unsqueeze(-1)  # [..., d, k]
        intercept = w[..., -1, :] - (mean.unsqueeze(-2) @ coef).squeeze(-2)
        self.mean_, self.scale_ = mean.numpy(), scale.numpy()
        if self.kind == "ridge":
            self.coef_ = coef[..., 0].contiguous().numpy()
            self.intercept_ = intercept[..., 0].numpy()
            if self.intercept_.ndim == 0:
                self.intercept_ = float(self.intercept_)
        else:
            self.coef_ = coef.transpose(-1, -2).contiguous().numpy()
            self.intercept_ = intercept.numpy()

    def _fit_chunked(self, X: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Binary logistic (``target [..., n]`` in {0, 1}), problem chunk by problem chunk; each
        chunk is one batched Newton solve. Returns the weights ``[..., d + 1, 1]`` on
        standardised features, the mean and the scale ``[..., d]``."""
        batch, (n, d) = X.shape[:-2], X.shape[-2:]
        flat_x = X.reshape(-1, n, d)
        flat_t = target.reshape(flat_x.shape[0], n).to(torch.float64)
        size = flat_x.shape[0]
        w = torch.empty(size, d + 1, 1, dtype=torch.float64)
        mean = torch.empty(size, d, dtype=torch.float64)
        scale = torch.empty(size, d, dtype=torch.float64)
        pen = torch.full((d + 1,), float(self.l2), dtype=torch.float64)
        pen[d] = 0.0  # the intercept is not penalised
        step = chunk_size(n, d)
        self.n_hessians_, self.n_iter_ = 0, 1
        for start in range(0, size, step):
            part = slice(start, start + step)
            zt, mean[part], scale[part] = _standardised_t(flat_x[part])
            wc, n_hess, n_iter = _newton_chunk(zt, flat_t[part], pen, tol=self.tol, max_iter=self.max_iter)
            w[part] = wc.unsqueeze(-1)
            self.n_hessians_ += n_hess
            self.n_iter_ = max(self.n_iter_, n_iter)
        return w.reshape(*batch, d + 1, 1), mean.reshape(*batch, d), scale.reshape(*batch, d)

    def _fit_ridge(self, X: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Ridge (``target [..., n, k]``), problem chunk by problem chunk; each chunk is one
        batched closed-form solve. Returns the weights ``[..., d + 1, k]`` on standardised
        features, the mean and the scale ``[..., d]``."""
        batch, (n, d) = X.shape[:-2], X.shape[-2:]
        flat_x = X.reshape(-1, n, d)
        flat_t = target.reshape(flat_x.shape[0], n, -1).to(torch.float64)
        size, k = flat_t.shape[0], flat_t.shape[-1]
        w = torch.empty(size, d + 1, k, dtype=torch.float64)
        mean = torch.empty(size, d, dtype=torch.float64)
        scale = torch.empty(size, d, dtype=torch.float64)
        step = min(size, chunk_size(n, d))
        aug, gram = ridge_buffers(step, n, d, k)
        self.n_hessians_, self.n_iter_ = 0, 1  # one solve
        with blas_threads():  # numpy's BLAS: the Gram matrices, the Cholesky factors
            for start in range(0, size, step):
                part = slice(start, start + step)
                w[part], mean[part], scale[part] = ridge_chunk(flat_x[part], flat_t[part], float(self.l2) * n,
                                                               aug, gram)
        return w.reshape(*batch, d + 1, k), mean.reshape(*batch, d), scale.reshape(*batch, d)

    def _fit_multiclass(self, X: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Softmax regression, full-batch L-BFGS on all problems together (they are
        independent, so minimising the sum minimises each)."""
        X = X.to(torch.float64)
        mean = X.mean(-2)
        std = X.std(-2, unbiased=False)
        scale = torch.where(std > 1e-12, std, torch.ones_like(std))
        Z = (X - mean.unsqueeze(-2)) / scale.unsqueeze(-2)
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
        self.n_iter_ = max(1, int(opt.state[opt.param_groups[0]["params"][0]].get("n_iter", 1)))
        return torch.cat([W, b.unsqueeze(-2)], -2), mean, scale

    # -- predicting ------------------------------------------------------------------------

    def _input(self, X) -> torch.Tensor:
        if not self.__sklearn_is_fitted__():
            raise ProbeNotFittedError("this LinearProbe is not fitted yet; call fit(X, y) first")
        if _batched(X):
            X = _as_tensor(X)
            if X.ndim < 2 or X.shape[-1] != self.n_features_in_:
                raise ProbeError(f"X must be [..., m, {self.n_features_in_}], got shape {tuple(X.shape)}")
            return X
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return torch.from_numpy(np.require(X, dtype=np.float64, requirements=["W"]))

    def _raw(self, X) -> torch.Tensor:
        """Outputs ``[..., m, k]``: logits (one logit difference for two classes), the ridge
        prediction, or circular's (cos, sin)."""
        X = self._input(X)
        coef = torch.from_numpy(np.ascontiguousarray(self.coef_, dtype=np.float64))
        intercept = torch.as_tensor(np.asarray(self.intercept_, dtype=np.float64))
        if self.kind == "ridge":
            coef, intercept = coef.unsqueeze(-2), intercept.unsqueeze(-1)
        batch, (k, d) = coef.shape[:-2], coef.shape[-2:]
        if X.ndim < 2 or X.shape[:-2] != batch or k > 4:
            return X @ coef.transpose(-1, -2) + intercept.unsqueeze(-2)
        m = X.shape[-2]
        flat_x = X.reshape(-1, m, d)
        flat_c = coef.reshape(-1, k, d)
        out = torch.empty(flat_x.shape[0], m, k, dtype=X.dtype)
        for i in range(flat_x.shape[0]):  # matrix-vector products: much faster than bmm here
            for j in range(k):
                torch.mv(flat_x[i], flat_c[i, j], out=out[i, :, j])
        return out.reshape(*X.shape[:-1], k) + intercept.unsqueeze(-2)

    @available_if(lambda self: self.kind == "logistic")
    def decision_function(self, X) -> np.ndarray:
        """Logistic scores: ``[..., m]`` (the logit of ``classes_[1]``) for two classes,
        ``[..., m, k]`` logits for ``k`` classes."""
        out = self._raw(X)
        return (out[..., 0] if out.shape[-1] == 1 else out).numpy()

    @available_if(lambda self: self.kind == "logistic")
    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities ``[..., m, k]`` in the order of ``classes_``."""
        out = self._raw(X)
        if out.shape[-1] == 1:
            p = torch.sigmoid(out)
            return torch.cat([1 - p, p], -1).numpy()
        return torch.softmax(out, -1).numpy()

    @available_if(lambda self: self.kind == "logistic")
    def predict_log_proba(self, X) -> np.ndarray:
        """``log(predict_proba(X))``, computed stably."""
        out = self._raw(X)
        if out.shape[-1] == 1:
            return torch.cat([F.logsigmoid(-out), F.logsigmoid(out)], -1).numpy()
        return torch.log_softmax(out, -1).numpy()

    def predict(self, X) -> np.ndarray:
        """Class labels, real values, or residues mod ``period``: ``[..., m]``."""
        out = self._raw(X)
        if self.kind == "logistic":
            best = (out[..., 0] > 0).long() if out.shape[-1] == 1 else out.argmax(-1)
            return self.classes_[best.numpy()]
        if self.kind == "circular":
            angle = torch.atan2(out[..., 1], out[..., 0])
            return (torch.round(angle * self.period / (2 * math.pi)) % self.period).long().numpy()
        return out[..., 0].numpy()

    def score(self, X, y, sample_weight=None) -> np.ndarray | float:
        """Accuracy (logistic, circular) or R² (ridge), one per problem (a float for one)."""
        pred = self.predict(X)
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1 and pred.ndim == 1:
            y = y[:, 0]
        y = np.broadcast_to(y, pred.shape)
        if self.kind == "circular":
            y = np.mod(y, self.period)
        if sample_weight is not None:
            if pred.ndim != 1:
                raise ProbeError("sample_weight applies to one problem, not a batch")
            if self.kind == "ridge":
                return float(r2_score(y, pred, sample_weight=sample_weight))
            return float(np.average(pred == y, weights=sample_weight))
        s = score_predictions(pred, y, "ridge" if self.kind == "ridge" else "accuracy")
        return float(s) if s.ndim == 0 else s


def fit_ridge_targets(X, ys: Sequence, *, l2: float = 1e-3) -> list[LinearProbe]:
    """One ridge :class:`LinearProbe` per target of ``ys``, fitted together.

    ``X`` is ``[..., n, d]`` (the batched layout of :meth:`LinearProbe.fit`) and each target
    ``[..., n]`` or ``[n]``. Every problem's Gram matrix, standardisation and Cholesky
    factorisation are computed once and serve all targets (their columns join the same
    ``syrk``), so ``k`` targets cost little more than one. Probe ``j`` equals
    ``LinearProbe("ridge", l2=l2).fit(X, ys[j])`` to float64 rounding (tested).
    """
    base = LinearProbe("ridge", l2=l2)
    base._check()
    if not ys:
        raise ProbeError("fit_ridge_targets needs at least one target")
    X = _as_float_tensor(X)
    if X.ndim < 2:
        raise ProbeError(f"X must be [..., n, d], got shape {tuple(X.shape)}")
    columns = []
    for i, y in enumerate(ys):
        t = _as_tensor(y.cpu() if isinstance(y, torch.Tensor) else y)
        if t.ndim == 0 or t.shape[-1] != X.shape[-2]:
            raise ProbeError(f"target {i} has shape {tuple(t.shape)}; X has {X.shape[-2]} samples")
        columns.append(t.expand(X.shape[:-1]))
    w, mean, scale = base._fit_ridge(X, torch.stack(columns, -1))
    probes = []
    for j in range(len(columns)):
        probe = LinearProbe("ridge", l2=l2)
        probe.n_features_in_, probe.n_hessians_, probe.n_iter_ = int(X.shape[-1]), 0, 1
        probe._set_weights(w[..., j:j + 1], mean, scale)
        probes.append(probe)
    return probes


def score_predictions(pred: np.ndarray, y: np.ndarray, kind: str) -> np.ndarray:
    """Score of predictions along the last axis: accuracy, or R² when ``kind`` is ``"ridge"``."""
    if kind != "ridge":
        return (pred == y).mean(-1)
    ss_res = ((y - pred) ** 2).sum(-1)
    ss_tot = ((y - y.mean(-1, keepdims=True)) ** 2).sum(-1)
    return 1 - ss_res / np.where(ss_tot > 0, ss_tot, np.nan)
