"""Helix fits of number representations (Kantamneni & Tegmark 2025).

:func:`fit_helix` models a site's activation for operand value ``a`` as
``h(a) ≈ μ + C·B(a)`` with ``B(a) = [1, a, cos(2πa/T), sin(2πa/T) for T in periods]``,
fitted by least squares in the top ≤100 principal components of the
activations. Baselines: ``"circle"`` (no linear term) and ``"pca"`` (the
activation projected onto as many principal components as the helix has
features) and ``"polynomial"`` (``B(a) = [1, a, a², …, a^m]`` with as many
non-constant features as the helix, ``m = 2·len(periods) + 1``). :func:`patch_with_fit` patches the fitted ``h(a)`` into corrupt
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
from pydantic import Field

from arithinterp.errors import MethodError, SiteError
from arithinterp.methods._common import make_meta
from arithinterp.methods.lens import number_tokens
from arithinterp.methods.registry import MethodSpec, Options, RunContext, check_layer, register
from arithinterp.models import Model, Site
from arithinterp.results import Result, ResultMeta, resultclass

HelixKind = Literal["helix", "circle", "pca", "polynomial"]
HELIX_KINDS: tuple[str, ...] = ("helix", "circle", "pca", "polynomial")


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


def polynomial_features(values: Sequence[float] | np.ndarray, periods: Sequence[float]) -> np.ndarray:
    """``[N, 2 + 2·len(periods)]``: the polynomials of degree ``≤ 2·len(periods) + 1`` in ``a``
    (Kantamneni & Tegmark's polynomial baseline, as many non-constant features as the helix).

    They span the same functions as ``[1, a, a², …]`` but are evaluated as Legendre
    polynomials of ``x = 2a/T_max − 1`` (``a ∈ [0, T_max)`` → ``[−1, 1)``), since raw powers
    up to ``a⁹`` make an ill-conditioned least-squares problem."""
    a = np.asarray(values, dtype=np.float64)
    x = 2 * a / max(max(periods, default=1.0), 1.0) - 1
    degree = 2 * len(periods) + 1
    return np.polynomial.legendre.legvander(x, degree)


def _features(kind: str, values, periods: Sequence[float]) -> np.ndarray:
    if kind == "polynomial":
        return polynomial_features(values, periods)
    return helix_features(values, periods, linear=kind == "helix")


@dataclasses.dataclass(frozen=True)
class HelixFit:
    """A fitted map from operand value (or activation, for ``"pca"``) to activation.

    ``mean_``: ``[d]``; ``components_``: ``[r, d]`` orthonormal PCA rows;
    ``coef_``: ``[n_features (+1 constant), r]`` (helix / circle / polynomial); ``r2_``: fraction of the
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
        return 2 * len(self.periods) + (0 if self.kind == "circle" else 1)

    def predict(self, values: Sequence[int] | np.ndarray, activations: torch.Tensor | None = None) -> torch.Tensor:
        """Fitted activations ``[N, d]`` for operand ``values`` (``"pca"`` needs the activations)."""
        if self.kind == "pca":
            if activations is None:
                raise MethodError("a 'pca' fit projects activations: pass them")
            x = activations.double() - self.mean_
            return self.mean_ + (x @ self.components_.T) @ self.components_
        feats = torch.as_tensor(_features(self.kind, values, self.periods))
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
        raise MethodError(f"kind must be one of {HELIX_KINDS}, got {kind!r}")
    h = _site_activations(model, site, tokens)
    return fit_helix_to_activations(h, values, periods=periods, kind=kind, n_pca=n_pca)


def helix_baselines(
    model: Model,
    site: Site,
    values: Sequence[int] | np.ndarray,
    *,
    tokens: torch.Tensor,
    periods: Sequence[float] = (2, 5, 10, 100),
    n_pca: int = 100,
) -> dict[str, HelixFit]:
    """The helix and its baselines (circle, PCA, polynomial) fitted to one cache of ``site``:
    ``{kind: fit}`` in :data:`HELIX_KINDS` order, ready for :func:`patch_with_fit`."""
    h = _site_activations(model, site, tokens)
    return {k: fit_helix_to_activations(h, values, periods=periods, kind=k, n_pca=n_pca) for k in HELIX_KINDS}


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
    if kind == "pca":  # as many components as the helix has non-constant features
        comps, coef = vt[: 2 * len(periods) + 1], None
        fitted = (x @ comps.T) @ comps
    else:
        comps = vt[: min(n_pca, vt.shape[0])]
        feats = torch.as_tensor(_features(kind, values, periods))
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
        fig = go.Figure(go.Bar(
            x=frame["component"], y=frame[self.metric], customdata=frame[["fraction", "r2"]],
            text=[f"R² {r:.2f}" for r in frame["r2"]], textposition="outside",
            hovertemplate="%{x}<br>logit diff %{y:.2f}<br>fraction of full %{customdata[0]:.2f}"
                          "<br>R² of the fit %{customdata[1]:.3f}<extra></extra>",
        ))
        fig.update_layout(
            title=f"patching fitted activations vs baselines: {self.meta.model}",
            xaxis_title="patched activation",
            yaxis_title="logit(clean answer): patched − corrupt",
        )
        return fig

    @classmethod
    def example(cls) -> HelixPatchResult:
        names = ["full", "helix", "circle", "pca", "polynomial"]
        coords = {"component": names}
        ld = np.array([8.3, 7.2, 6.8, 6.1, 2.4])
        return cls(
            values=xr.DataArray(ld, dims=("component",), coords=coords),
            meta=ResultMeta(method="patch_with_fit", model="synthetic"),
            extras={
                "fraction": xr.DataArray(ld / ld[0], dims=("component",), coords=coords),
                "r2": xr.DataArray([1.0, 0.8, 0.7, 0.9, 0.5], dims=("component",), coords=coords),
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

    Computed as ``x − (removed components of L)·W⁺``, so removing nothing returns ``x``
    bit for bit.
    """
    from arithinterp.methods.fourier import basis_freqs, fourier_basis

    w = w_u_numbers.double()
    n = w.shape[1]
    bad = [k for k in remove if not 1 <= int(k) <= n // 2]
    if bad:
        raise MethodError(f"frequencies {bad} outside 1..{n // 2}")
    drop = torch.as_tensor(np.isin(basis_freqs(n), [int(k) for k in remove]))
    if not bool(drop.any()):
        return x.clone()
    basis = fourier_basis(n)[drop]  # the removed rows, [r, N]
    w_pinv = torch.linalg.pinv(w)  # [N, d]
    xd = x.double()
    removed = ((xd @ w) @ basis.T) @ (basis @ w_pinv)
    return (xd - removed).to(x.dtype)


# -- the filter ablation (Zhou et al. 2024, Table 1) ------------------------------------------

FilterBand = Literal["low", "high", "none"]
FILTER_BANDS: tuple[str, ...] = ("low", "high", "none")


def filter_bands(n: int, cutoff_period: float = 10.0) -> dict[str, list[int]]:
    """The frequencies each band removes over ``N`` numbers.

    ``"low"``: ``k = 1..⌊N/2⌋`` with period ``N/k > cutoff_period`` (magnitude);
    ``"high"``: period ``N/k ≤ cutoff_period`` (the modular features: periods 10, 5,
    2.5, 2 with the default cutoff 10, as in Zhou et al.); ``"none"``: nothing (an
    all-pass filter). The constant (``k = 0``) is in no band: it moves every number's
    logit together and says nothing about which number."""
    if cutoff_period <= 0:
        raise MethodError(f"cutoff_period must be > 0, got {cutoff_period}")
    ks = range(1, n // 2 + 1)
    return {
        "low": [k for k in ks if n / k > cutoff_period],
        "high": [k for k in ks if n / k <= cutoff_period],
        "none": [],
    }


@resultclass
class FourierFilterResult(Result):
    """Accuracy after a Fourier filter ablation, per module and band.

    ``values``: dims ``(component, freq)``: accuracy when the band ``freq`` (``"low"``,
    ``"high"``, ``"none"``) is removed from module ``component`` (the site label:
    ``"ATTN0"``, ``"MLP0"``, ...; coordinates ``layer``, ``kind``). ``freq`` carries the
    coordinate ``periods`` (the band's periods as text). Extras: ``drop``
    (``unfiltered − accuracy``). ``unfiltered``: accuracy of the unablated model.
    """

    unfiltered: float = 0.0
    metric_name = "accuracy"

    def plot(self) -> go.Figure:
        frame = self.to_frame()
        fig = go.Figure()
        for band in self.values.coords["freq"].values:
            part = frame[frame["freq"] == band]
            periods = str(self.values.coords["periods"].sel(freq=band).values)
            fig.add_trace(go.Bar(
                x=part["component"], y=part[self.metric], name=f"remove {band} ({periods})",
                customdata=part["drop"],
                hovertemplate="%{x}<br>accuracy %{y:.3f}<br>drop %{customdata:.3f}<extra></extra>",
            ))
        fig.add_hline(y=self.unfiltered, line_dash="dash", annotation_text="unfiltered")
        fig.update_layout(
            barmode="group",
            title=f"Fourier filter ablation: {self.meta.model}",
            xaxis_title="filtered module (number-unembedding subspace, answer position)",
            yaxis_title="accuracy",
            yaxis_range=[0, 1.05],
        )
        return fig

    @classmethod
    def example(cls) -> FourierFilterResult:
        acc = np.array([[0.98, 0.41], [0.12, 0.97]])
        coords = {
            "component": ["ATTN0", "MLP0"],
            "freq": ["low", "high"],
            "layer": ("component", [0, 0]),
            "kind": ("component", ["attn_out", "mlp_out"]),
            "periods": ("freq", ["T > 10", "T <= 10"]),
        }
        values = xr.DataArray(acc, dims=("component", "freq"), coords=coords)
        extras = {"drop": xr.DataArray(0.99 - acc, dims=values.dims, coords=values.coords)}
        return cls(values=values, meta=ResultMeta(method="fourier_filter_ablation", model="synthetic"),
                   extras=extras, unfiltered=0.99)


def _accuracy(logits: torch.Tensor, answers: torch.Tensor, pos: int) -> float:
    return float((logits[:, pos].argmax(-1).cpu() == answers).double().mean())


def fourier_filter_ablation(
    model: Model,
    tokens: torch.Tensor,
    answers: Sequence[int] | torch.Tensor,
    *,
    numbers: Sequence[int],
    bands: Sequence[FilterBand] = ("low", "high"),
    cutoff_period: float = 10.0,
    layers: Sequence[int] | None = None,
    pos: int = -1,
) -> FourierFilterResult:
    """Zhou et al.'s filter ablation: accuracy when a module's output loses a frequency band.

    For each module (``attn_out`` and ``mlp_out`` of each layer in ``layers``, default
    all) and each band of :func:`filter_bands`, the module's output at position ``pos``
    is replaced by :func:`fourier_filter` of it in the number-unembedding subspace
    (``W_U[:, numbers]``, the number tokens in numeric order) and the forward pass
    continues; accuracy is the share of prompts whose top token at ``pos`` is
    ``answers``. One module is filtered at a time.

    Args:
        model: the model.
        tokens: prompts ``[batch, seq]``.
        answers: the correct token id per prompt.
        numbers: token ids of the numbers ``0..N-1``, in numeric order.
        bands: bands to remove (``"none"`` is the all-pass check).
        cutoff_period: periods ``≤`` this are the high band (default 10).
        layers: layers whose modules are filtered.
        pos: the position that predicts the answer.
    """
    unknown = [b for b in bands if b not in FILTER_BANDS]
    if unknown:
        raise MethodError(f"bands {unknown} unknown; valid bands: {list(FILTER_BANDS)}")
    answers = torch.as_tensor(answers).reshape(-1).cpu()
    if tokens.ndim != 2 or tokens.shape[0] != answers.shape[0]:
        raise MethodError(f"tokens must be [batch, seq] with one answer per prompt; got tokens "
                         f"{tuple(tokens.shape)} and {answers.shape[0]} answers")
    n_layers = model.shape.n_layers
    layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad:
        raise MethodError(f"layers {bad} outside 0..{n_layers - 1}")
    numbers = list(numbers)
    if len(numbers) < 3:
        raise MethodError("need at least 3 number tokens for a Fourier basis over numbers")
    w_num = model.weights().W_U[:, torch.as_tensor(numbers)].detach().double().cpu()
    removed = filter_bands(len(numbers), cutoff_period)
    unfiltered = _accuracy(model.logits(tokens), answers, pos)
    modules = [(kind, layer) for layer in layers for kind in ("attn_out", "mlp_out")]
    acc = np.zeros((len(modules), len(bands)))
    for i, (kind, layer) in enumerate(modules):
        site = Site(kind, layer, pos=pos)
        for j, band in enumerate(bands):
            def filt(x: torch.Tensor, remove=tuple(removed[band])) -> torch.Tensor:
                return fourier_filter(x, w_num.to(x.device), remove=remove)

            acc[i, j] = _accuracy(model.run_with_patches(tokens, {site: filt}), answers, pos)
    n = len(numbers)
    text = {
        "low": f"T > {cutoff_period:g}", "high": f"T <= {cutoff_period:g}", "none": "all-pass",
    }
    coords = {
        "component": [Site(k, layer).label for k, layer in modules],
        "freq": list(bands),
        "layer": ("component", [layer for _, layer in modules]),
        "kind": ("component", [k for k, _ in modules]),
        "periods": ("freq", [text[b] for b in bands]),
    }
    values = xr.DataArray(acc, dims=("component", "freq"), coords=coords)
    meta = make_meta(
        "fourier_filter_ablation", model,
        options={"bands": list(bands), "cutoff_period": cutoff_period, "layers": layers, "pos": pos,
                 "n_numbers": n, "n_prompts": int(answers.shape[0])},
        extra={"removed_freqs": {b: removed[b] for b in bands}},
    )
    extras = {"drop": xr.DataArray(unfiltered - acc, dims=values.dims, coords=values.coords)}
    return FourierFilterResult(values=values, meta=meta, extras=extras, unfiltered=unfiltered)


# -- registration ---------------------------------------------------------------------------------

ResidKind = Literal["resid_pre", "resid_mid", "resid_post"]


class HelixOptions(Options):
    """Helix fits of an operand's representation (Kantamneni & Tegmark 2025), judged by patching the
    fitted activation into the corrupt prompts (:func:`fit_helix`, :func:`patch_with_fit`).

    Fits on the task's prompts at ``site`` (layer ``layer``, position ``pos`` of operand a):
    ``kinds`` with ``periods``; ``own_periods: k`` adds a helix on the embedding spectrum's ``k``
    strongest periods; ``shuffled`` adds the shuffled-value control.
    """

    site: ResidKind = "resid_pre"
    layer: int = Field(0, ge=0)
    pos: int = 0
    periods: list[float] = Field(default_factory=lambda: [2.0, 5.0, 10.0, 100.0], min_length=1)
    kinds: list[Literal["helix", "circle", "pca"]] = Field(
        default_factory=lambda: ["helix", "circle", "pca"], min_length=1)
    own_periods: int = Field(4, ge=0)
    shuffled: bool = True
    n_pca: int = Field(100, ge=1)


def _helix_data(ctx: RunContext):
    pairs = ctx.require_pairs()
    batch = ctx.batch("single")
    column = "operand_a" if pairs.operand != "b" else "operand_b"
    fit_tokens = ctx.tokens("single").prompt_tokens
    fit_values = ctx.prompts.frame[column].to_numpy()
    clean_values = pairs.clean.frame[column].to_numpy()
    return batch, fit_tokens, fit_values, clean_values


def _check_helix(ctx: RunContext, options: HelixOptions) -> None:
    check_layer(ctx.model, options.layer)
    _helix_data(ctx)
    if options.own_periods:
        number_tokens(ctx.model, ctx.spec, "W_E")


def _run_helix(ctx: RunContext, options: HelixOptions) -> HelixPatchResult:
    from arithinterp.methods.fourier import embedding_spectrum

    batch, fit_tokens, fit_values, clean_values = _helix_data(ctx)
    site = Site(options.site, options.layer, pos=options.pos)
    periods = tuple(options.periods)
    fits = {kind: fit_helix(ctx.model, site, fit_values, tokens=fit_tokens, periods=periods, kind=kind,
                            n_pca=options.n_pca) for kind in options.kinds}
    if options.own_periods:
        _, ids = number_tokens(ctx.model, ctx.spec, "W_E")
        strongest = embedding_spectrum(ctx.model, ids.tolist()).top_periods(options.own_periods)
        own = tuple(round(t, 4) for t, _ in strongest)
        fits["helix_own_periods"] = fit_helix(ctx.model, site, fit_values, tokens=fit_tokens, periods=own,
                                              n_pca=options.n_pca)
    if options.shuffled:
        rng = np.random.default_rng(ctx.seed)
        fits["helix_shuffled"] = fit_helix(ctx.model, site, rng.permutation(fit_values), tokens=fit_tokens,
                                           periods=periods, n_pca=options.n_pca)
    return patch_with_fit(ctx.model, site, fits, clean_tokens=batch.clean, corrupt_tokens=batch.corrupt,
                          clean_values=clean_values, answer_ids=batch.clean_answer[:, 0])


register(MethodSpec(
    name="helix", function=fit_helix, inputs="pairs", result=HelixPatchResult, options=HelixOptions,
    step_only=frozenset(HelixOptions.model_fields), run=_run_helix, check=_check_helix,
))
