"""Ablations, path patching and circuit faithfulness.

* :func:`ablate` runs prompts with sites zeroed, mean-ablated or resampled.
* :func:`path_patch` (Wang et al. 2022, as used by Zhang et al. ICML 2024) measures
  the part of a sender's effect that travels only through chosen receivers.
* :func:`faithfulness` (Nikankin et al., ICLR 2025) scores a circuit with
  everything outside it mean-ablated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

import numpy as np
import plotly.graph_objects as go
import torch
import xarray as xr
from tqdm.auto import tqdm

from arithinterp.errors import ConfigError, SiteError, TokenizationError
from arithinterp.methods._common import make_meta
from arithinterp.methods.metrics import (
    AnswerMode,
    MetricFn,
    PairBatch,
    normalise,
    resolve_metric,
    tokenize_pairs,
)
from arithinterp.methods.patching import PatchingResult, sweep_sites
from arithinterp.models import Model, Patch, Site
from arithinterp.models.site import LAYERLESS_KINDS, SITE_KIND_INFO
from arithinterp.results import Result, bootstrap_ci, resultclass
from arithinterp.tasks import PromptPairs, PromptSet, tokenize

Ablation = Literal["zero", "mean", "resample"]
ABLATIONS: tuple[str, ...] = get_args(Ablation)

# ---- ablations --------------------------------------------------------------------------


def _check_reference(tokens: torch.Tensor, reference: torch.Tensor) -> None:
    if reference.ndim != 2 or reference.shape[0] == 0:
        raise TokenizationError(f"reference tokens must be a non-empty [batch, pos], got {tuple(reference.shape)}")
    if reference.shape[1] != tokens.shape[1]:
        raise TokenizationError(
            f"reference prompts have {reference.shape[1]} tokens but the ablated prompts {tokens.shape[1]}; "
            "means and resamples are taken per position, so both need one length"
        )


def site_means(model: Model, sites: Sequence[Site], reference_tokens: torch.Tensor, *,
               batch_size: int = 64) -> dict[Site, torch.Tensor]:
    """The mean of each site's activation over ``reference_tokens``, per position.

    Each mean has the site's activation shape without the batch dim (accumulated in
    float64, returned in the model's dtype).
    """
    sums: dict[Site, torch.Tensor] = {}
    n = reference_tokens.shape[0]
    for start in range(0, n, batch_size):
        _, cache = model.run_with_cache(reference_tokens[start:start + batch_size], sites)
        for site in sites:
            part = cache[site].double().sum(0)
            sums[site] = part if site not in sums else sums[site] + part
    return {site: (total / n).to(model.dtype) for site, total in sums.items()}


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
    sites = [sites] if isinstance(sites, Site) else list(sites)
    if kind not in ABLATIONS:
        raise ConfigError(f"unknown ablation {kind!r}; valid: {', '.join(ABLATIONS)}")
    if tokens.ndim != 2:
        raise TokenizationError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}")
    model.validate(sites, tokens.shape[1])
    if kind == "zero":
        return model.run_with_patches(tokens, {s: torch.zeros(()) for s in sites})
    reference = tokens if reference_tokens is None else reference_tokens.to(tokens.device)
    _check_reference(tokens, reference)
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
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    metric_name, metric_fn = resolve_metric(metric)
    batch = pairs if isinstance(pairs, PairBatch) else tokenize_pairs(pairs, model.tokenizer, answer=answer)
    senders, dims, coords = _senders(model, sender_sites, batch.seq_len)
    model.validate(receivers, batch.seq_len)

    def score(logits: torch.Tensor, part: PairBatch) -> torch.Tensor:
        return metric_fn(logits[:, part.answer_positions], part.clean_answer, part.corrupt_answer).double()

    frozen_all = [Site(k, layer) for layer in range(model.shape.n_layers) for k in ("attn_out", "mlp_out")]
    out, clean_scores, corrupt_scores = [], [], []
    bar = tqdm(total=len(senders) * -(-len(batch) // batch_size), desc="path patching",
               disable=not progress, leave=False)
    for start in range(0, len(batch), batch_size):
        part = batch.slice(start, start + batch_size)
        clean, corrupt = part.clean.to(model.device), part.corrupt.to(model.device)
        clean_logits, clean_cache = model.run_with_cache(clean, frozen_all)
        corrupt_logits, corrupt_cache = model.run_with_cache(corrupt, senders)
        clean_scores.append(score(clean_logits, part))
        corrupt_scores.append(score(corrupt_logits, part))
        per_sender = torch.empty(len(senders), len(part), dtype=torch.float64)
        for i, sender in enumerate(senders):
            patches: dict[Site, Patch] = {s: clean_cache[s] for s in _frozen(model, sender)}
            patches[sender] = corrupt_cache[sender]
            _, received = model.run_with_cache(clean, receivers, patches)
            logits = model.run_with_patches(clean, {r: received[r] for r in receivers})
            per_sender[i] = score(logits, part)
            bar.update(1)
        out.append(per_sender)
    bar.close()
    scores = torch.cat(out, 1)
    clean_mean = float(torch.cat(clean_scores).mean())
    corrupt_mean = float(torch.cat(corrupt_scores).mean())
    if normalize:
        scores = normalise(scores, clean_mean, corrupt_mean)
    shape = [len(coords[d]) for d in dims]
    mean, low, high = bootstrap_ci(scores.numpy().reshape(*shape, len(batch)), axis=-1, n_boot=n_boot, seed=seed)
    values = xr.DataArray(np.asarray(mean), dims=dims, coords=coords)
    meta = make_meta(
        "path_patch", model, getattr(pairs, "clean", None),
        options={"senders": sender_sites if isinstance(sender_sites, str) else [s.label for s in senders],
                 "receivers": [r.label for r in receivers], "metric": metric_name, "normalize": normalize,
                 "answer": answer, "n_pairs": len(batch), "n_boot": n_boot, "direction": "noise"},
        seed=seed, extra={"clean_mean": clean_mean, "corrupt_mean": corrupt_mean},
    )
    extras = {"ci_low": values.copy(data=np.asarray(low)), "ci_high": values.copy(data=np.asarray(high))}
    return PathPatchingResult(values=values, meta=meta, extras=extras)


# ---- faithfulness -----------------------------------------------------------------------

FaithfulnessMetric = Literal["nl", "logit_diff", "accuracy"]
FAITHFULNESS_METRICS: tuple[str, ...] = get_args(FaithfulnessMetric)
CIRCUIT_KINDS: tuple[str, ...] = tuple(k for k, i in SITE_KIND_INFO.items() if i.circuit)
_TARGETS = ("circuit", "full", "ablated")


@resultclass
class FaithfulnessResult(Result):
    """Faithfulness of a circuit (Nikankin et al.): ``F = (s(c) − s(∅)) / (s(M) − s(∅))``.

    ``values``: dim ``target`` = ``circuit`` (everything outside the circuit
    mean-ablated), ``full`` (the model, M), ``ablated`` (every head and MLP
    mean-ablated, ∅): the mean score over prompts, with bootstrap ``ci_low`` /
    ``ci_high``. ``faithfulness`` is F (``None`` when ``s(M) == s(∅)``), with a
    bootstrap interval over prompts.
    """

    faithfulness: float | None = None
    faithfulness_ci_low: float | None = None
    faithfulness_ci_high: float | None = None

    metric_name = "score"

    def plot(self) -> go.Figure:
        v = self.values
        fig = go.Figure(go.Bar(
            x=[str(t) for t in v.coords["target"].values], y=v.values,
            error_y={"type": "data", "symmetric": False,
                     "array": (self.extras["ci_high"] - v).values if "ci_high" in self.extras else None,
                     "arrayminus": (v - self.extras["ci_low"]).values if "ci_low" in self.extras else None},
        ))
        f = "undefined" if self.faithfulness is None else f"{self.faithfulness:.3f}"
        fig.update_layout(title=f"faithfulness F = {f} ({self.meta.options.get('metric', '')})",
                          xaxis_title="target", yaxis_title=self.meta.options.get("metric", "score"))
        return fig

    @classmethod
    def example(cls) -> FaithfulnessResult:
        values = xr.DataArray(np.array([0.8, 0.9, 0.1]), dims=("target",), coords={"target": np.array(_TARGETS)})
        meta = make_meta("faithfulness", None, options={"metric": "nl", "circuit": ["MLP0"]})
        return cls(values=values, meta=meta, extras={"ci_low": values - 0.05, "ci_high": values + 0.05},
                   faithfulness=0.875, faithfulness_ci_low=0.8, faithfulness_ci_high=0.95)


def _circuit_parts(model: Model, circuit: Sequence[Site]) -> tuple[list[set[int]], list[set[int] | None]]:
    """Per layer: the kept heads, and the kept MLP neurons (``None``: the whole MLP)."""
    shape = model.shape
    heads: list[set[int]] = [set() for _ in range(shape.n_layers)]
    mlps: list[set[int] | None] = [set() for _ in range(shape.n_layers)]
    for site in circuit:
        if not isinstance(site, Site):
            raise ConfigError(f"a circuit is a sequence of Site, got {site!r}")
        if site.kind not in CIRCUIT_KINDS:
            raise SiteError(f"{site.label} cannot be a circuit component; valid kinds: {', '.join(CIRCUIT_KINDS)}")
        if site.pos is not None:
            raise SiteError(f"{site.label}: circuit components hold for every position; drop pos")
        site.validate(shape)
        layer = int(site.layer)
        if site.kind in ("attn_out", "attn_head") and site.head is None:
            heads[layer] = set(range(shape.n_heads))
        elif site.kind == "attn_head":
            heads[layer].add(int(site.head))
        elif site.kind == "mlp_out" or site.neuron is None:
            mlps[layer] = None
        elif mlps[layer] is not None:
            mlps[layer].add(int(site.neuron))
    return heads, mlps


def _keep_only(mean: torch.Tensor, keep: set[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Replace every head (``attn_head``: ``[batch, pos, head, d_head]``) or neuron
    (``mlp_post``: ``[batch, pos, neuron]``) not in ``keep`` with its mean ``[pos, ...]``."""
    drop = torch.tensor(sorted(set(range(mean.shape[1])) - keep), dtype=torch.long, device=mean.device)

    def fn(current: torch.Tensor) -> torch.Tensor:
        out = current.clone()  # `current` may be a view the model still reads
        out[:, :, drop] = mean[:, drop].to(out.dtype)
        return out

    return fn


def _ablation_patches(model: Model, heads: list[set[int]], mlps: list[set[int] | None],
                      means: dict[Site, torch.Tensor]) -> dict[Site, Patch]:
    shape = model.shape
    patches: dict[Site, Patch] = {}
    for layer in range(shape.n_layers):
        kept = heads[layer]
        if not kept:
            patches[Site("attn_out", layer)] = means[Site("attn_out", layer)]
        elif len(kept) < shape.n_heads:
            patches[Site("attn_head", layer)] = _keep_only(means[Site("attn_head", layer)], kept)
        neurons = mlps[layer]
        if neurons is not None and not neurons:
            patches[Site("mlp_out", layer)] = means[Site("mlp_out", layer)]
        elif neurons is not None:
            patches[Site("mlp_post", layer)] = _keep_only(means[Site("mlp_post", layer)], neurons)
    return patches


def _faithfulness_scores(logits: torch.Tensor, answer: torch.Tensor, metric: str) -> torch.Tensor:
    """Per prompt, averaged over answer tokens: NL = correct logit / max logit; logit_diff =
    correct logit − the largest other logit; accuracy = argmax is correct at every token."""
    logits = logits.double()
    correct = logits.gather(-1, answer.unsqueeze(-1)).squeeze(-1)
    if metric == "accuracy":
        return (logits.argmax(-1) == answer).all(-1).double()
    if metric == "nl":
        return (correct / logits.max(-1).values).mean(-1)
    others = logits.scatter(-1, answer.unsqueeze(-1), float("-inf"))
    return (correct - others.max(-1).values).mean(-1)


def _faithfulness_ratio(c: np.ndarray, full: np.ndarray, empty: np.ndarray) -> float | None:
    denom = float(full.mean() - empty.mean())
    if denom == 0.0:
        return None
    return float((c.mean() - empty.mean()) / denom)


def faithfulness(
    model: Model,
    circuit: Sequence[Site],
    prompts: PromptSet,
    *,
    reference: PromptSet | None = None,
    metric: FaithfulnessMetric = "nl",
    answer: AnswerMode = "single",
    batch_size: int = 64,
    n_boot: int = 1000,
    seed: int = 0,
) -> FaithfulnessResult:
    """Nikankin et al.'s mean-ablation faithfulness of ``circuit`` on ``prompts``.

    Every attention head and MLP outside the circuit is replaced by its mean output
    for its position over ``reference`` (default: ``prompts``; the paper uses every
    ``op1∘op2=`` prompt, correct or not). The granularity follows the circuit's sites:
    ``attn_head`` (layer, head) keeps one head (``head=None`` or ``attn_out``: the
    whole layer), ``mlp_out`` keeps a whole MLP, ``mlp_post`` (layer, neuron) keeps
    single neurons and mean-ablates the layer's other neurons. A layer whose heads /
    MLP the circuit does not name is mean-ablated whole. Embeddings are never ablated.

    Scores (at the answer position; with ``answer="multi"`` the mean over the
    teacher-forced answer tokens, and accuracy = every token right): ``"nl"``, the
    paper's correct-answer logit / max logit (a fraction when the max logit is
    positive, as in trained models); ``"logit_diff"``, correct logit minus the largest
    other logit; ``"accuracy"``. ``F = (s(c) − s(∅)) / (s(M) − s(∅))`` on
    mean scores, so F(full circuit) = 1 and F(empty circuit) = 0 exactly.

    With ``answer="multi"`` the reference prompts are teacher-forced with their own
    answers, which must then tokenize to the same length as the prompts'.
    """
    if metric not in FAITHFULNESS_METRICS:
        raise ConfigError(f"unknown faithfulness metric {metric!r}; valid: {', '.join(FAITHFULNESS_METRICS)}")
    if answer not in get_args(AnswerMode):
        raise ConfigError(f"answer must be one of {get_args(AnswerMode)}, got {answer!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    circuit = list(circuit)
    heads, mlps = _circuit_parts(model, circuit)
    tok = tokenize(prompts, model.tokenizer, answer=answer)
    seqs = tok.prompt_tokens if answer == "single" else tok.tokens[:, :-1]
    ref_set = prompts if reference is None else reference
    if answer == "single":
        ref = seqs if reference is None else model.to_tokens(list(reference.prompts)).cpu()
    else:
        ref = seqs if reference is None else tokenize(ref_set, model.tokenizer, answer="multi").tokens[:, :-1]
    _check_reference(seqs, ref)

    empty_heads, empty_mlps = _circuit_parts(model, [])
    needed = [Site(k, layer) for layer in range(model.shape.n_layers) for k in ("attn_out", "mlp_out")]
    needed += [Site("attn_head", layer) for layer, kept in enumerate(heads) if 0 < len(kept) < model.shape.n_heads]
    needed += [Site("mlp_post", layer) for layer, kept in enumerate(mlps) if kept]
    means = site_means(model, needed, ref.to(model.device), batch_size=batch_size)
    empty = _ablation_patches(model, empty_heads, empty_mlps, means)
    in_circuit = _ablation_patches(model, heads, mlps, means)

    def run(patches: dict[Site, Patch]) -> np.ndarray:
        out = []
        for start in range(0, seqs.shape[0], batch_size):
            logits = model.run_with_patches(seqs[start:start + batch_size].to(model.device), patches)
            answers = tok.answer_tokens[start:start + batch_size].to(model.device)
            out.append(_faithfulness_scores(logits[:, tok.answer_positions], answers, metric).cpu())
        return torch.cat(out).numpy()

    full_scores = run({})
    empty_scores = run(empty)
    # The endpoints reuse the same runs, so F is exactly 1 or 0 there.
    if not in_circuit:
        circuit_scores = full_scores
    elif (heads, mlps) == (empty_heads, empty_mlps):
        circuit_scores = empty_scores
    else:
        circuit_scores = run(in_circuit)
    samples = np.stack([circuit_scores, full_scores, empty_scores])
    mean, low, high = bootstrap_ci(samples, axis=1, n_boot=n_boot, seed=seed)
    rng = np.random.default_rng(seed)
    n = samples.shape[1]
    boot = [_faithfulness_ratio(*samples[:, rng.integers(0, n, n)]) for _ in range(n_boot)]
    boot_arr = np.array([b for b in boot if b is not None])
    f_low, f_high = (np.quantile(boot_arr, [0.025, 0.975]) if boot_arr.size else (None, None))
    values = xr.DataArray(np.asarray(mean), dims=("target",), coords={"target": np.array(_TARGETS)})
    meta = make_meta(
        "faithfulness", model, prompts,
        options={"circuit": [s.label for s in circuit], "metric": metric, "answer": answer,
                 "reference_hash": ref_set.hash, "n_prompts": n, "n_reference": int(ref.shape[0]),
                 "n_boot": n_boot},
        seed=seed,
    )
    return FaithfulnessResult(
        values=values, meta=meta,
        extras={"ci_low": values.copy(data=np.asarray(low)), "ci_high": values.copy(data=np.asarray(high))},
        faithfulness=_faithfulness_ratio(circuit_scores, full_scores, empty_scores),
        faithfulness_ci_low=None if f_low is None else float(f_low),
        faithfulness_ci_high=None if f_high is None else float(f_high),
    )
