"""Helix fits of number representations (Kantamneni & Tegmark 2025).

:func:`fit_helix` models a site's activation for operand value ``a`` as
``h(a) ≈ μ + C·B(a)`` with ``B(a) = [1, a, cos(2πa/T), sin(2πa/T) for T in periods]``,
fitted by least squares in the top ≤100 principal components of the
activations. Baselines: ``"circle"`` (no linear term) and ``"pca"`` (the
activation projected onto as many principal components as the helix has
features). :func:`patch_with_fit` patches the fitted ``h(a)`` into corrupt
prompts ``a'+b`` and measures how much of the clean answer's logit it restores,
beside the full activation patch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import plotly.graph_objects as go
import torch
import xarray as xr

from arithinterp.errors import SiteError
from arithinterp.methods._common import make_meta
from arithinterp.models import Model, Site
from arithinterp.results import Result, ResultMeta

HelixKind = Literal["helix", "circle", "pca"]
HELIX_KINDS: tuple[str, ...] = ("helix", "circle", "pca")


def helix_features(values: Sequence[float] | np.ndarray, periods: Sequence[float], *, linear: bool = True) -> np.ndarray:
    """``[N, 1 + linear + 2·len(periods)]``: constant, ``a`` (scaled to [0, 1]
    by the largest period), then ``cos, sin(2πa/T)`` per period."""
    a = np.asarray(values, dtype=np.float64)
    cols = [np.ones_like(a)]
    if linear:
        cols.append(a / max(max(periods, default=1.0), 1.0))
    for t in periods:
        cols += [np.cos(2 * np.pi * a / t), np.sin(2 * np.pi * a / t)]
    return np.stack(cols, axis=1)


@dataclasses.dataclass(frozen=True)
class HelixFit:
    """A fitted map from operand value (or activation, for ``"pca"``) to activation.

    ``mean_``: ``[d]``; ``components_``: ``[r, d]`` orthonormal PCA rows;
    ``coef_``: ``[n_features, r]`` (helix / circle); ``r2_``: fraction of the
    activations' variance the fit explains on the data it was fitted to.
    """

    kind: str
    periods: tuple[float, ...]
    mean_: torch.Tensor
    components_: torch.Tensor
    coef_: torch.Tensor | None
    r2_: float

    @property
    def n_features(self) -> int:
        return 2 * len(self.periods) + (1 if self.kind != "circle" else 0)

    def predict(self, values: Sequence[int] | np.ndarray, activations: torch.Tensor | None = None) -> torch.Tensor:
        """Fitted activations ``[N, d]`` for operand ``values`` (``"pca"`` needs the activations)."""
        if self.kind == "pca":
            if activations is None:
                raise ValueError("a 'pca' fit projects activations: pass them")
            x = activations.double() - self.mean_
            return self.mean_ + (x @ self.components_.T) @ self.components_
        feats = torch.as_tensor(helix_features(values, self.periods, linear=self.kind == "helix"))
        return self.mean_ + feats @ self.coef_ @ self.components_


def _site_activations(model: Model, site: Site, tokens: torch.Tensor) -> torch.Tensor:
    if site.pos is None:
        raise SiteError(f"{site.label} needs the position of the operand token (e.g. pos=0)")
    _, cache = model.run_with_cache(tokens, [site])
    return cache[site].detach().double().reshape(tokens.shape[0], -1).cpu()


def fit_helix(
    model: Model,
    site: Site,
    values: Sequence[int] | np.ndarray,
    *,
    tokens: torch.Tensor,
    periods: Sequence[float] = (2, 5, 10, 100),
    kind: HelixKind = "helix",
    n_pca: int = 100,
) -> HelixFit:
    """Fit ``site``'s activation on ``tokens`` (one prompt per entry of ``values``) as a helix in ``a``."""
    if kind not in HELIX_KINDS:
        raise ValueError(f"kind must be one of {HELIX_KINDS}, got {kind!r}")
    h = _site_activations(model, site, tokens)
    return fit_helix_to_activations(h, values, periods=periods, kind=kind, n_pca=n_pca)


def fit_helix_to_activations(
    h: torch.Tensor,
    values: Sequence[int] | np.ndarray,
    *,
    periods: Sequence[float] = (2, 5, 10, 100),
    kind: HelixKind = "helix",
    n_pca: int = 100,
) -> HelixFit:
    """:func:`fit_helix` on given activations ``[N, d]``."""
    h = torch.as_tensor(h).double()
    mean = h.mean(dim=0)
    x = h - mean
    _, _, vt = torch.linalg.svd(x, full_matrices=False)
    periods = tuple(float(t) for t in periods)
    n_feat = 2 * len(periods) + (1 if kind == "helix" else 0)
    if kind == "pca":
        comps, coef = vt[: n_feat + 1], None
        fitted = (x @ comps.T) @ comps
    else:
        comps = vt[: min(n_pca, vt.shape[0])]
        feats = torch.as_tensor(helix_features(values, periods, linear=kind == "helix"))
        # sin(2πa/2) vanishes on integers: a cut-off keeps such columns from blowing up.
        coef = torch.linalg.lstsq(feats, x @ comps.T, rcond=1e-10, driver="gelsd").solution
        fitted = feats @ coef @ comps
    r2 = 1.0 - float((x - fitted).pow(2).sum() / x.pow(2).sum().clamp_min(1e-30))
    return HelixFit(kind=kind, periods=periods, mean_=mean, components_=comps, coef_=coef, r2_=r2)


class HelixPatchResult(Result):
    """Logit difference restored by patching fitted activations, per fit.

    ``values``: dims ``(component,)``: ``"full"`` (the clean activation) and
    one entry per fit. Extras: ``fraction`` (of the full patch), ``r2``.
    """

    metric_name = "logit_diff"

    def plot(self) -> go.Figure:
        frame = self.to_frame()
        fig = go.Figure(go.Bar(x=frame["component"], y=frame[self.metric]))
        fig.update_layout(
            title=f"patching fitted activations: {self.meta.model}",
            xaxis_title="patched activation",
            yaxis_title="logit(clean answer): patched − corrupt",
        )
        return fig

    @classmethod
    def example(cls) -> HelixPatchResult:
        names = ["full", "helix", "circle", "pca"]
        coords = {"component": names}
        ld = np.array([8.3, 7.2, 6.8, 6.1])
        return cls(
            values=xr.DataArray(ld, dims=("component",), coords=coords),
            meta=ResultMeta(method="patch_with_fit", model="synthetic"),
            extras={
                "fraction": xr.DataArray(ld / ld[0], dims=("component",), coords=coords),
                "r2": xr.DataArray([1.0, 0.8, 0.7, 0.9], dims=("component",), coords=coords),
            },
        )


def patch_with_fit(
    model: Model,
    site: Site,
    fits: Mapping[str, HelixFit],
    *,
    clean_tokens: torch.Tensor,
    corrupt_tokens: torch.Tensor,
    clean_values: Sequence[int] | np.ndarray,
    answer_ids: Sequence[int] | torch.Tensor,
) -> HelixPatchResult:
    """Patch ``fit.predict(a)`` at ``site`` into the corrupt prompts ``a'+b``.

    The logit difference is ``logit_patched(answer) − logit_corrupt(answer)`` at
    the last position for the clean answer ``a+b``, averaged over pairs.
    """
    answers = torch.as_tensor(answer_ids).reshape(-1, 1)
    clean_h = _site_activations(model, site, clean_tokens)

    def answer_logit(patch: torch.Tensor | None) -> torch.Tensor:
        if patch is None:
            logits = model.logits(corrupt_tokens)
        else:
            logits = model.run_with_patches(corrupt_tokens, {site: patch.to(model.dtype)})
        return logits[:, -1].double().gather(-1, answers).squeeze(-1).detach().cpu()

    base = answer_logit(None)
    names = ["full", *fits]
    patches = [clean_h] + [f.predict(clean_values, clean_h) for f in fits.values()]
    ld = np.array([float((answer_logit(p) - base).mean()) for p in patches])
    r2 = np.array([1.0] + [f.r2_ for f in fits.values()])
    coords = {"component": names}
    meta = make_meta(
        "patch_with_fit",
        model,
        options={"site": site.label, "fits": {n: [f.kind, list(f.periods)] for n, f in fits.items()}},
    )
    return HelixPatchResult(
        values=xr.DataArray(ld, dims=("component",), coords=coords),
        meta=meta,
        extras={
            "fraction": xr.DataArray(ld / ld[0] if ld[0] != 0 else np.zeros_like(ld), dims=("component",), coords=coords),
            "r2": xr.DataArray(r2, dims=("component",), coords=coords),
        },
    )


def fourier_filter(
    x: torch.Tensor, w_u_numbers: torch.Tensor, *, remove: Sequence[int]
) -> torch.Tensor:
    """Remove frequencies from the number-logit part of residual vectors (Zhou et al. 2024).

    ``x``: ``[..., d]`` (a module's output); ``w_u_numbers``: ``[d, N]``, the
    unembedding columns of the numbers ``0..N-1``. The part of ``x`` in the span of
    those columns is read as number logits ``L = x·W``, the frequencies ``remove``
    (``1..⌊N/2⌋``) are zeroed in ``L``'s Fourier basis, and the result is mapped back
    with ``W⁺`` and added to the untouched orthogonal remainder. Patch the result in
    place of the module output to run the filter ablation.
    """
    from arithinterp.methods.fourier import basis_freqs, fourier_basis

    w = w_u_numbers.double()
    n = w.shape[1]
    bad = [k for k in remove if not 1 <= int(k) <= n // 2]
    if bad:
        raise ValueError(f"frequencies {bad} outside 1..{n // 2}")
    basis = fourier_basis(n)
    w_pinv = torch.linalg.pinv(w)  # [N, d]
    xd = x.double()
    logits = xd @ w
    parallel = logits @ w_pinv
    drop = torch.as_tensor(np.isin(basis_freqs(n), list(remove)))
    coef = logits @ basis.T
    coef[..., drop] = 0
    filtered = (coef @ basis) @ w_pinv
    return (xd - parallel + filtered).to(x.dtype)
