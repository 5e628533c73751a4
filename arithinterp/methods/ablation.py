"""Ablations and path patching.

* :func:`ablate` runs prompts with sites zeroed, mean-ablated or resampled.
* :func:`path_patch` (Wang et al. 2022, as used by Zhang et al. ICML 2024) measures
  the part of a sender's effect that travels only through chosen receivers.

Circuit faithfulness lives in :mod:`arithinterp.methods.faithfulness` (its names
are re-exported here for older imports).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import plotly.graph_objects as go
import torch
import xarray as xr

from arithinterp.errors import ConfigError, SiteError, TokenizationError
from arithinterp.methods._common import make_meta
from arithinterp.methods.contrast import contrast, package
from arithinterp.methods.faithfulness import (
    CIRCUIT_KINDS,
    FAITHFULNESS_METRICS,
    FaithfulnessMetric,
    FaithfulnessResult,
    check_reference,
    faithfulness,
    site_means,
)
from arithinterp.methods.metrics import AnswerMode, MetricFn, PairBatch
from arithinterp.methods.patching import PatchingResult
from arithinterp.methods.sweep import sweep_sites
from arithinterp.models import Model, Patch, Site
from arithinterp.models.site import LAYERLESS_KINDS, SITE_KIND_INFO
from arithinterp.progress_bars import tqdm
from arithinterp.tasks import PromptPairs

__all__ = [
    "ABLATIONS",
    "CIRCUIT_KINDS",
    "FAITHFULNESS_METRICS",
    "Ablation",
    "FaithfulnessMetric",
    "FaithfulnessResult",
    "PathPatchingResult",
    "ablate",
    "faithfulness",
    "path_patch",
    "site_means",
]

Ablation = Literal["zero", "mean", "resample"]
ABLATIONS: tuple[str, ...] = get_args(Ablation)

# ---- ablations --------------------------------------------------------------------------


def ablate(
    model: Model,
    tokens: torch.Tensor,
    sites: Site | Sequence[Site],
    *,
    kind: Ablation,
    reference_tokens: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Logits ``[batch, pos, vocab]`` of ``tokens`` with every site in ``sites`` ablated.

    - ``"zero"``: the activation is set to 0;
    - ``"mean"``: its mean per position over ``reference_tokens`` (default: ``tokens``);
    - ``"resample"``: for each prompt, the activation on one reference prompt drawn
      uniformly with ``seed`` (the same draw for every site of that prompt). Without
      ``reference_tokens`` the draw is another prompt of ``tokens`` (never itself).
    """
    sites = [sites] if isinstance(sites, (Site, str)) else list(sites)
    if kind not in ABLATIONS:
        raise ConfigError(f"unknown ablation {kind!r}; valid: {', '.join(ABLATIONS)}")
    if tokens.ndim != 2:
        raise TokenizationError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}")
    model.validate(sites, tokens.shape[1])
    if kind == "zero":
        return model.run_with_patches(tokens, {s: torch.zeros(()) for s in sites})
    reference = tokens if reference_tokens is None else reference_tokens.to(tokens.device)
    check_reference(tokens, reference)
    if kind == "mean":
        means = site_means(model, sites, reference)
        return model.run_with_patches(tokens, dict(means))
    gen = torch.Generator().manual_seed(seed)
    n, m = tokens.shape[0], reference.shape[0]
    if reference_tokens is None:
        if n < 2:
            raise ConfigError("resampling from the prompts themselves needs at least 2 prompts")
        # Draw among the n - 1 others: shift draws at or above i by one.
        draw = torch.randint(0, n - 1, (n,), generator=gen)
        draw = draw + (draw >= torch.arange(n)).long()
    else:
        draw = torch.randint(0, m, (n,), generator=gen)
    _, cache = model.run_with_cache(reference[draw.to(reference.device)], sites)
    return model.run_with_patches(tokens, {s: cache[s] for s in sites})


# ---- path patching ----------------------------------------------------------------------

SENDER_KINDS: tuple[str, ...] = tuple(k for k, i in SITE_KIND_INFO.items() if i.path_point is not None)
RECEIVER_KINDS: tuple[str, ...] = tuple(k for k, i in SITE_KIND_INFO.items() if i.receiver)

# Where a site sits in the forward pass: block L's attention is 4L+2, its MLP 4L+4,
# the residual stream before/between/after them 4L+1 / 4L+3 / 4L+5 (SiteKindInfo.path_point).
_POINT = {k: i.path_point for k, i in SITE_KIND_INFO.items() if i.layered and i.path_point is not None}


def _point(site: Site) -> int:
    return 0 if site.kind == "embed" else 4 * int(site.layer) + _POINT[site.kind]


def _frozen(model: Model, sender: Site) -> list[Site]:
    """Every attention layer and MLP downstream of ``sender`` (held at its clean output)."""
    here = _point(sender)
    out = []
    for layer in range(model.shape.n_layers):
        if 4 * layer + 2 > here:
            out.append(Site("attn_out", layer))
        if 4 * layer + 4 > here:
            out.append(Site("mlp_out", layer))
    return out


class PathPatchingResult(PatchingResult):
    """Path-patching effect of each sender through the receivers.

    ``values``: dims ``(layer[, head | neuron])`` for a swept sender kind, else
    ``(site,)`` labelled by each sender's label; extras ``ci_low`` / ``ci_high``.
    ``meta.options`` lists the receivers.
    """

    def plot(self) -> go.Figure:
        fig = super().plot()
        opts = self.meta.options
        norm = " (normalised: 1 = clean, 0 = corrupt)" if opts.get("normalize") else ""
        n_recv = len(opts.get("receivers", []))
        fig.update_layout(title=f"path patching of {opts.get('senders', '')} through {n_recv} receiver site(s): "
                                f"{opts.get('metric', '')}{norm}")
        return fig

    @classmethod
    def example(cls) -> PathPatchingResult:
        labels = np.array(["L0H0", "L0H1", "MLP0"])
        values = xr.DataArray(np.array([0.9, 0.1, 0.4]), dims=("site",), coords={"site": labels})
        extras = {"ci_low": values - 0.1, "ci_high": values + 0.1}
        meta = make_meta("path_patch", None, options={"senders": list(labels), "receivers": ["final"],
                                                      "metric": "logit_diff", "normalize": True})
        return cls(values=values, meta=meta, extras=extras)


def _senders(model: Model, senders: str | Site | Sequence[Site], seq_len: int) -> tuple[list[Site], tuple, dict]:
    if isinstance(senders, str):
        if senders not in SENDER_KINDS:
            raise SiteError(f"unknown sender kind {senders!r}; valid senders: {', '.join(SENDER_KINDS)}")
        if senders not in LAYERLESS_KINDS:
            sites, layout = sweep_sites(model, senders, per_position=False, seq_len=seq_len)
            return sites, layout["dims"], layout["coords"]
        senders = [Site(senders)]
    sites = [senders] if isinstance(senders, Site) else list(senders)
    if not sites:
        raise ConfigError("path_patch needs at least one sender site")
    labels = [s.label for s in sites]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"sender sites repeat: {labels}")
    return model.validate(sites, seq_len), ("site",), {"site": np.array(labels)}


def _check_kinds(sites: Sequence[Site], valid: tuple[str, ...], role: str) -> None:
    bad = [s.label for s in sites if s.kind not in valid]
    if bad:
        raise SiteError(f"{bad} cannot be {role}s in path patching; valid {role} kinds: {', '.join(valid)}")


def path_patch(
    model: Model,
    pairs: PromptPairs | PairBatch,
    sender_sites: str | Site | Sequence[Site],
    receiver_sites: Site | Sequence[Site],
    *,
    metric: str | MetricFn = "logit_diff",
    normalize: bool = True,
    answer: AnswerMode = "multi",
    batch_size: int = 32,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> PathPatchingResult:
    """Path patching: the effect of each sender that reaches the output only through the receivers.

    For each sender, on clean prompts: (1) run clean and corrupt and cache; (2) run clean
    with the sender set to its corrupt value and every attention layer and MLP downstream
    of it frozen to its clean output (so the sender's change reaches later sites only
    directly through the residual stream), caching the receivers; (3) run clean with only
    the receivers set to their values from (2) and score the metric. Freezing a whole
    attention layer's output equals freezing each of its heads (the output is linear in
    the heads' ``z``); nothing upstream of the sender, or beside it in its own layer, can
    change, so only downstream components need freezing.

    Args:
        model: the model.
        pairs: clean/corrupt pairs or a tokenized :class:`PairBatch`.
        sender_sites: sender sites (``attn_head`` = a head's ``z``, ``attn_out``, ``mlp_out``,
            ``embed`` / ``resid_pre`` / ``resid_mid`` / ``resid_post``), one result cell each;
            or a kind name to sweep every site of that kind (every head for ``attn_head``).
        receiver_sites: ``q`` / ``k`` / ``v`` of heads, ``mlp_post`` (an MLP's input as its
            neurons see it), or a residual stream (``resid_pre`` / ``resid_mid`` /
            ``resid_post`` / ``final_resid``: the whole stream at that point, read by
            everything after it). Receivers upstream of a sender receive nothing.
        metric: as :func:`arithinterp.methods.patching.patch_activations`.
        normalize: as there; normalised values are 1 for the clean run and 0 for the corrupt run.
        answer: as there (``"multi"`` or ``"single"``).
        batch_size: pairs per forward pass.
        n_boot: bootstrap resamples over pairs for ``ci_low`` / ``ci_high``.
        seed: bootstrap seed.
        progress: show a progress bar.
    """
    receivers = [receiver_sites] if isinstance(receiver_sites, Site) else list(receiver_sites)
    if not receivers:
        raise ConfigError("path_patch needs at least one receiver site")
    _check_kinds(receivers, RECEIVER_KINDS, "receiver")
    if not isinstance(sender_sites, str):
        _check_kinds([sender_sites] if isinstance(sender_sites, Site) else list(sender_sites), SENDER_KINDS, "sender")
    # The sender takes its corrupt value in the clean run: path patching always noises.
    con = contrast(model, pairs, answer=answer, metric=metric, direction="noise", normalize=normalize,
                   batch_size=batch_size, n_boot=n_boot)
    senders, dims, coords = _senders(model, sender_sites, con.batch.seq_len)
    model.validate(receivers, con.batch.seq_len)

    frozen_all = [Site(k, layer) for layer in range(model.shape.n_layers) for k in ("attn_out", "mlp_out")]
    out, clean_scores, corrupt_scores = [], [], []
    bar = tqdm(total=len(senders) * -(-con.n_pairs // batch_size), desc="path patching",
               disable=not progress, leave=False)
    for part in con.parts(batch_size):
        clean, corrupt = part.clean.to(model.device), part.corrupt.to(model.device)
        clean_logits, clean_cache = model.run_with_cache(clean, frozen_all)
        corrupt_logits, corrupt_cache = model.run_with_cache(corrupt, senders)
        clean_scores.append(con.score(clean_logits, part))
        corrupt_scores.append(con.score(corrupt_logits, part))
        per_sender = torch.empty(len(senders), len(part), dtype=torch.float64)
        for i, sender in enumerate(senders):
            patches: dict[Site, Patch] = {s: clean_cache[s] for s in _frozen(model, sender)}
            patches[sender] = corrupt_cache[sender]
            _, received = model.run_with_cache(clean, receivers, patches)
            logits = model.run_with_patches(clean, {r: received[r] for r in receivers})
            per_sender[i] = con.score(logits, part)
            bar.update(1)
        out.append(per_sender)
    bar.close()
    options = {"senders": sender_sites if isinstance(sender_sites, str) else [s.label for s in senders],
               "receivers": [r.label for r in receivers], **con.options, "n_boot": n_boot}
    values, extras, meta = package(con, model, "path_patch", torch.cat(out, 1), dims=dims, coords=coords,
                                   clean_mean=float(torch.cat(clean_scores).mean()),
                                   corrupt_mean=float(torch.cat(corrupt_scores).mean()),
                                   options=options, n_boot=n_boot, seed=seed)
    return PathPatchingResult(values=values, meta=meta, extras=extras)
