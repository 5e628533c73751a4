"""Closed-form ridge regression for many independent problems at once.

Each problem's fit comes from one float64 Gram matrix (a BLAS ``syrk``) of its rows
``[x - s | 1 | y - ybar]``: the feature Gram matrix, the feature sums and ``X'y`` in one
pass, with the centring and the standardisation folded in afterwards and one Cholesky
factorisation serving every target of the problem. :class:`~arithinterp.methods.probes.LinearProbe`
(``kind="ridge"`` and ``"circular"``) and the streamed fits of
:mod:`arithinterp.methods.probe_stream` are built on these pieces.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

__all__ = ["blas_threads", "chunk_size", "cholesky", "gram_matrices", "ridge_buffers", "ridge_chunk"]

# Problems are fitted in chunks of about this many bytes of float64 features, so that a
# chunk's Newton iterations read data that stays in the CPU cache instead of streaming
# every problem from memory on every iteration.
_CHUNK_BYTES = 4 << 20
_MAX_CHUNK = 64


def chunk_size(n: int, d: int) -> int:
    """Problems of ``n`` samples and ``d`` features per chunk (:data:`_CHUNK_BYTES` of float64)."""
    return int(min(_MAX_CHUNK, max(1, _CHUNK_BYTES // (8 * n * (d + 1)))))


@functools.cache
def _blas() -> ThreadpoolController:
    """The BLAS libraries numpy loaded (found once: the search reads the process's map)."""
    return ThreadpoolController()


def blas_threads() -> AbstractContextManager:
    """A context in which numpy's BLAS runs on torch's thread count: left to its default it
    takes every core, and on a busy machine runs several times slower."""
    return _blas().limit(limits=torch.get_num_threads(), user_api="blas")


def gram_matrices(rows: torch.Tensor, out: np.ndarray) -> torch.Tensor:
    """``rows[i]' rows[i]`` of each problem of ``rows [c, n, m]`` (row-major) into ``out``
    ``[>= c, m, m]`` (numpy, of ``rows``' dtype), inside :func:`blas_threads`.

    numpy's product of a matrix with its own transpose is one BLAS ``syrk``: half the
    products of torch's ``bmm``, which has no symmetric kernel."""
    a = rows.numpy()
    for i in range(a.shape[0]):
        np.matmul(a[i].T, a[i], out=out[i])
    return torch.from_numpy(out[:a.shape[0]])


def cholesky(a: torch.Tensor, jitter: float = 1e-8) -> torch.Tensor:
    """Lower Cholesky factors of a batch of symmetric positive (semi)definite matrices; one
    that does not factor (``l2 = 0`` on collinear features) gets ``jitter`` times its mean
    diagonal added (inside :func:`blas_threads`)."""
    try:
        return torch.from_numpy(np.linalg.cholesky(a.numpy()))  # batched LAPACK, faster than torch's
    except np.linalg.LinAlgError:
        chol, info = torch.linalg.cholesky_ex(a)
        bad = info > 0
        add = jitter * a[bad].diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
        chol[bad] = torch.linalg.cholesky(a[bad] + add[:, None, None] * torch.eye(a.shape[-1], dtype=a.dtype))
        return chol


def ridge_buffers(c: int, n: int, d: int, k: int, dtype=torch.float64) -> tuple[torch.Tensor, np.ndarray]:
    """A chunk's work space for :func:`ridge_chunk`: ``[shifted x | 1 | y - ybar]`` rows
    ``[c, n, d + 1 + k]`` (the column of ones written once) and their Gram matrices."""
    aug = torch.empty(c, n, d + 1 + k, dtype=dtype)
    aug[..., d] = 1.0
    return aug, np.empty((c, d + 1 + k, d + 1 + k), dtype=aug.numpy().dtype)


def ridge_chunk(
    x: torch.Tensor, y: torch.Tensor, alpha: float, aug: torch.Tensor, gram: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ridge on standardised features for a chunk of problems ``x [c, n, d]`` against targets
    ``y [c, n, k]``: ``(Z'Z + alpha I) W = Z'(Y - Ybar)``, intercept ``Ybar``.

    Everything comes from one Gram matrix per problem (float64, as scikit-learn's ``Ridge``)
    of the rows ``[x - s | 1 | y - ybar]``: ``Xs'Xs``, the feature sums and ``Xs'(y - ybar)``,
    in one pass over the features. ``s``, the mean of the first 64 rows, is a provisional
    centre: folding the centring in afterwards costs a factor ``(ms / sd)^2`` of float64
    rounding, ``ms`` the true mean's distance from ``s``. The standardisation is folded in too,
    ``Z'Z = D^-1 (Xs'Xs - n ms ms') D^-1``, so no centred or standardised copy is made, and
    one Cholesky factorisation per problem serves every target. ``aug`` and ``gram`` (from
    :func:`ridge_buffers`, at least ``c`` problems) are reused across chunks; call it
    inside :func:`blas_threads`. Returns the weights ``[c, d + 1, k]`` (the last row the
    intercept), the mean and the scale ``[c, d]``."""
    c, n, d = x.shape
    ybar = y.mean(1, keepdim=True)
    shift = x[:, :64].mean(1, keepdim=True, dtype=torch.float64)
    torch.sub(x, shift, out=aug[:c, :, :d])
    torch.sub(y, ybar, out=aug[:c, :, d + 1:])
    g = gram_matrices(aug[:c], gram)
    mean_s = g[:, :d, d] / n  # the mean of the shifted features
    cov = g[:, :d, :d] - n * mean_s.unsqueeze(-1) * mean_s.unsqueeze(-2)
    std = cov.diagonal(dim1=1, dim2=2).div(n).clamp_min(0).sqrt()
    scale = torch.where(std > 1e-12, std, torch.ones_like(std))  # a constant feature keeps 1
    inv = 1.0 / scale
    lhs = cov.mul_(inv.unsqueeze(-1)).mul_(inv.unsqueeze(-2))
    lhs.diagonal(dim1=1, dim2=2).add_(alpha)
    # Xs'(y - ybar) = Xc'(y - ybar) + ms * sum(y - ybar); the sum is zero up to rounding
    rhs = (g[:, :d, d + 1:] - mean_s.unsqueeze(-1) * g[:, d:d + 1, d + 1:]) * inv.unsqueeze(-1)
    chol = cholesky(lhs)
    w = torch.cholesky_solve(rhs, chol.mT, upper=True)  # numpy's row-major L is LAPACK's U
    return torch.cat([w, ybar], 1), mean_s + shift.squeeze(1), scale
