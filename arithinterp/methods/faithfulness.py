"""Circuit faithfulness (Nikankin et al., ICLR 2025) and the mean ablations it is built from.

:func:`faithfulness` scores a circuit with every attention head and MLP outside
it replaced by its per-position mean over reference prompts. The pieces are
public so that circuit discovery (:mod:`arithinterp.methods.circuits`) scores
many candidate circuits with the same means:

* :func:`site_means`: per-position means of sites over reference tokens;
* :func:`circuit_parts`: a circuit as the heads and neurons it keeps per layer;
* :func:`ablation_patches`: the patches that mean-ablate everything else;
* :func:`faithfulness_scores` / :func:`faithfulness_ratio`: the per-prompt
  score and ``F = (s(c) − s(∅)) / (s(M) − s(∅))``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

import numpy as np
import plotly.graph_objects as go
import torch
import xarray as xr

from arithinterp.errors import ConfigError, SiteError, TokenizationError
from arithinterp.methods._common import check_positive_int, make_meta
from arithinterp.methods.contrast import check_answer
from arithinterp.methods.metrics import AnswerMode
from arithinterp.models import Model, Patch, Site
from arithinterp.models.site import SITE_KIND_INFO
from arithinterp.results import Result, bootstrap_ci, resultclass
from arithinterp.tasks import PromptSet, tokenize

__all__ = [
    "CIRCUIT_KINDS",
    "FAITHFULNESS_METRICS",
    "FaithfulnessMetric",
    "FaithfulnessResult",
    "ablation_patches",
    "check_reference",
    "circuit_parts",
    "faithfulness",
    "faithfulness_ratio",
    "faithfulness_scores",
    "site_means",
]


def check_reference(tokens: torch.Tensor, reference: torch.Tensor) -> None:
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


def circuit_parts(model: Model, circuit: Sequence[Site]) -> tuple[list[set[int]], list[set[int] | None]]:
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


def ablation_patches(model: Model, heads: list[set[int]], mlps: list[set[int] | None],
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


def faithfulness_scores(logits: torch.Tensor, answer: torch.Tensor, metric: str) -> torch.Tensor:
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


def faithfulness_ratio(c: np.ndarray, full: np.ndarray, empty: np.ndarray) -> float | None:
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
    check_answer(answer)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    check_positive_int("n_boot", n_boot)  # used only after every forward pass
    circuit = list(circuit)
    heads, mlps = circuit_parts(model, circuit)
    tok = tokenize(prompts, model.tokenizer, answer=answer)
    seqs = tok.prompt_tokens if answer == "single" else tok.tokens[:, :-1]
    ref_set = prompts if reference is None else reference
    if answer == "single":
        ref = seqs if reference is None else model.to_tokens(list(reference.prompts)).cpu()
    else:
        ref = seqs if reference is None else tokenize(ref_set, model.tokenizer, answer="multi").tokens[:, :-1]
    check_reference(seqs, ref)

    empty_heads, empty_mlps = circuit_parts(model, [])
    needed = [Site(k, layer) for layer in range(model.shape.n_layers) for k in ("attn_out", "mlp_out")]
    needed += [Site("attn_head", layer) for layer, kept in enumerate(heads) if 0 < len(kept) < model.shape.n_heads]
    needed += [Site("mlp_post", layer) for layer, kept in enumerate(mlps) if kept]
    means = site_means(model, needed, ref.to(model.device), batch_size=batch_size)
    empty = ablation_patches(model, empty_heads, empty_mlps, means)
    in_circuit = ablation_patches(model, heads, mlps, means)

    def run(patches: dict[Site, Patch]) -> np.ndarray:
        out = []
        for start in range(0, seqs.shape[0], batch_size):
            logits = model.run_with_patches(seqs[start:start + batch_size].to(model.device), patches)
            answers = tok.answer_tokens[start:start + batch_size].to(model.device)
            out.append(faithfulness_scores(logits[:, tok.answer_positions], answers, metric).cpu())
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
    boot = [faithfulness_ratio(*samples[:, rng.integers(0, n, n)]) for _ in range(n_boot)]
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
        faithfulness=faithfulness_ratio(circuit_scores, full_scores, empty_scores),
        faithfulness_ci_low=None if f_low is None else float(f_low),
        faithfulness_ci_high=None if f_high is None else float(f_high),
    )
