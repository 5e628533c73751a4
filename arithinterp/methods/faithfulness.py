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

from arithinterp.errors import ConfigError, SiteError
from arithinterp.methods._common import make_meta
from arithinterp.methods.circuit_ablation import (
    CIRCUIT_ABLATIONS,
    AblationValues,
    AnswerData,
    CircuitAblation,
    ablation_values,
    check_ablation,
    check_reference,
    site_means,
)
from arithinterp.methods.contrast import check_answer
from arithinterp.methods.metrics import AnswerMode
from arithinterp.models import Model, Patch, Site
from arithinterp.models.site import SITE_KIND_INFO
from arithinterp.results import Result, bootstrap_ci, resultclass
from arithinterp.tasks import PromptPairs, PromptSet, tokenize

__all__ = [
    "CIRCUIT_ABLATIONS",
    "CIRCUIT_KINDS",
    "CircuitAblation",
    "FAITHFULNESS_METRICS",
    "FaithfulnessMetric",
    "FaithfulnessResult",
    "ablation_patches",
    "check_reference",
    "CircuitScorer",
    "circuit_parts",
    "circuit_scores",
    "faithfulness",
    "faithfulness_ratio",
    "faithfulness_scores",
    "site_means",
]


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


def ablation_patches(model: Model, heads: list[set[int]], mlps: list[set[int] | None],
                     values: dict[Site, torch.Tensor]) -> dict[Site, Patch]:
    """The patches that replace every head and neuron / MLP a circuit does not keep.

    ``values`` are the replacements by whole site (``attn_out``, ``attn_head``, ``mlp_out``,
    ``mlp_post`` of each layer; shared ``[pos, ...]`` or per prompt ``[batch, pos, ...]``). A
    layer with no head kept is replaced at ``attn_out`` when ``values`` has it, else every
    head's ``z`` is replaced (the attention bias stays).
    """
    shape = model.shape
    patches: dict[Site, Patch] = {}
    for layer in range(shape.n_layers):
        kept = heads[layer]
        if not kept and Site("attn_out", layer) in values:
            patches[Site("attn_out", layer)] = values[Site("attn_out", layer)]
        elif len(kept) < shape.n_heads:
            patches[Site("attn_head", layer)] = _keep_heads(values[Site("attn_head", layer)], kept)
        neurons = mlps[layer]
        if neurons is not None and not neurons:
            patches[Site("mlp_out", layer)] = values[Site("mlp_out", layer)]
        elif neurons is not None:
            patches[Site("mlp_post", layer)] = _keep_units(values[Site("mlp_post", layer)], neurons, unit_dim=-1)
    return patches


def _keep_heads(value: torch.Tensor, keep: set[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    return _keep_units(value, keep, unit_dim=-2)


def _keep_units(value: torch.Tensor, keep: set[int], *, unit_dim: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Replace every head (``attn_head``: ``[batch, pos, head, d_head]``, ``unit_dim=-2``) or neuron
    (``mlp_post``: ``[batch, pos, neuron]``, ``unit_dim=-1``) not in ``keep`` with its replacement:
    one value for every prompt (``[pos, ...]``) or one per prompt (``[batch, pos, ...]``)."""
    drop = torch.tensor(sorted(set(range(value.shape[unit_dim])) - keep), dtype=torch.long, device=value.device)
    dim = value.ndim + unit_dim

    def fn(current: torch.Tensor) -> torch.Tensor:
        out = current.clone()  # `current` may be a view the model still reads
        out[:, :, drop] = value.index_select(dim, drop).to(out.dtype)
        return out

    return fn


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


def circuit_scores(model: Model, data: AnswerData, metric: str, values: AblationValues,
                   heads: list[set[int]] | None, mlps: list[set[int] | None] | None, *,
                   batch_size: int = 64) -> np.ndarray:
    """Per-draw, per-prompt scores ``[n_draws, n_prompts]`` with everything outside the kept
    ``heads`` / ``mlps`` replaced by ``values`` (``heads=None``: the model, nothing replaced)."""
    n = data.seqs.shape[0]
    n_draws = 1 if heads is None else values.n_draws
    out = np.zeros((n_draws, n))
    for draw in range(n_draws):
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            patches = {} if heads is None else ablation_patches(model, heads, mlps, values.values(draw, start, stop))
            logits = model.run_with_patches(data.seqs[start:stop].to(model.device), patches)
            answers = data.answers[start:stop].to(model.device)
            out[draw, start:stop] = faithfulness_scores(logits[:, data.positions], answers, metric).cpu().numpy()
    return out


# ---- many circuits of one model and prompt set --------------------------------------------


class CircuitScorer:
    """Scores many circuits on one prompt set: the replacements are built once (``ablation``),
    then :meth:`keep` / :meth:`remove` score a circuit with one pass per draw and batch."""

    def __init__(self, model: Model, prompts: PromptSet, reference: PromptSet | None, *,
                 metric: str, answer: AnswerMode, batch_size: int, answer_index: int | None = None,
                 ablation: str = "mean", n_draws: int = 1, seed: int = 0, corrupt: torch.Tensor | None = None,
                 neurons: bool = True) -> None:
        self.model, self.metric, self.batch_size = model, metric, batch_size
        tok = tokenize(prompts, model.tokenizer, answer=answer)
        answers, positions = tok.answer_tokens, tok.answer_positions
        if answer_index is not None:
            answers = answers[:, answer_index:answer_index + 1]
            positions = positions[answer_index:answer_index + 1]
        seqs = tok.prompt_tokens if answer == "single" else tok.tokens[:, :-1]
        self.seqs = seqs
        self.data = AnswerData(seqs, answers, positions)
        ref_data = self.data
        if reference is None:
            ref = seqs
        elif answer == "single" and ablation != "optimal":
            ref = model.to_tokens(list(reference.prompts)).cpu()
        else:
            rtok = tokenize(reference, model.tokenizer, answer=answer)
            ref = rtok.prompt_tokens if answer == "single" else rtok.tokens[:, :-1]
            r_answers, r_positions = rtok.answer_tokens, rtok.answer_positions
            if answer_index is not None:
                r_answers = r_answers[:, answer_index:answer_index + 1]
                r_positions = r_positions[answer_index:answer_index + 1]
            ref_data = AnswerData(ref, r_answers, r_positions)
        check_reference(seqs, ref)
        self.values = ablation_values(model, ablation, seqs, reference=ref, self_reference=reference is None,
                                      corrupt=corrupt, neurons=neurons, n_draws=n_draws, seed=seed,
                                      batch_size=batch_size, answers=ref_data)

    def run_parts(self, heads: list[set[int]] | None, mlps: list[set[int] | None] | None) -> float:
        """The mean score with everything outside ``heads`` / ``mlps`` ablated (``None``: nothing)."""
        return float(circuit_scores(self.model, self.data, self.metric, self.values, heads, mlps,
                                    batch_size=self.batch_size).mean())

    def keep(self, circuit: Sequence[Site]) -> float:
        """The score with everything outside ``circuit`` mean-ablated."""
        heads, mlps = circuit_parts(self.model, circuit)
        return self.run_parts(heads, mlps)

    def keep_among(self, circuit: Sequence[Site], candidates: Sequence[Site]) -> float:
        """The score with every candidate outside ``circuit`` ablated; components that are not
        candidates are kept (MIB's items: only scored components are ever ablated)."""
        n_heads, d_mlp = self.model.shape.n_heads, self.model.shape.d_mlp
        cand_heads, cand_mlps = circuit_parts(self.model, candidates)
        kept_heads, kept_mlps = circuit_parts(self.model, circuit)
        heads = [(set(range(n_heads)) - c) | k for c, k in zip(cand_heads, kept_heads)]
        mlps: list[set[int] | None] = []
        for cand, kept in zip(cand_mlps, kept_mlps):
            if kept is None or (cand is not None and not cand):
                mlps.append(None)  # kept whole, or no candidate in this MLP
            elif cand is None:
                mlps.append(set())  # the whole MLP is a candidate left out: ablated
            else:
                keep = (set(range(d_mlp)) - cand) | kept
                mlps.append(None if len(keep) == d_mlp else keep)
        return self.run_parts(heads, mlps)

    def remove(self, circuit: Sequence[Site]) -> float:
        """The score with only ``circuit`` mean-ablated (the completeness check)."""
        shape = self.model.shape
        heads, mlps = circuit_parts(self.model, circuit)
        all_heads = set(range(shape.n_heads))
        keep_heads = [all_heads - h for h in heads]
        keep_mlps: list[set[int] | None] = []
        for kept in mlps:
            if kept is None:
                keep_mlps.append(set())  # the whole MLP is in the circuit: ablate it
            elif not kept:
                keep_mlps.append(None)  # untouched
            else:
                keep_mlps.append(set(range(shape.d_mlp)) - kept)
        # A layer whose every head is in the circuit keeps none: ablation_patches then
        # ablates the whole attention output, which is the same thing.
        return self.run_parts(keep_heads, keep_mlps)


def _faithfulness_inputs(model: Model, prompts: PromptSet | PromptPairs, reference: PromptSet | None,
                         answer: str, ablation: str) -> tuple[AnswerData, torch.Tensor, torch.Tensor | None,
                                                              AnswerData | None]:
    """The scored prompts, the reference tokens, the corrupt tokens (pairs only) and, for
    ``"optimal"``, the reference with its answers (what the constants are learned on)."""
    clean = prompts.clean if isinstance(prompts, PromptPairs) else prompts
    tok = tokenize(clean, model.tokenizer, answer=answer)
    seqs = tok.prompt_tokens if answer == "single" else tok.tokens[:, :-1]
    data = AnswerData(seqs, tok.answer_tokens, tok.answer_positions)
    corrupt = None
    if isinstance(prompts, PromptPairs):
        ctok = tokenize(prompts.corrupt, model.tokenizer, answer=answer)
        corrupt = ctok.prompt_tokens if answer == "single" else ctok.tokens[:, :-1]
    if reference is None:
        return data, seqs, corrupt, data
    if answer == "single" and ablation != "optimal":
        # Means and resamples read the prompts only: their answers need not be one token.
        return data, model.to_tokens(list(reference.prompts)).cpu(), corrupt, None
    rtok = tokenize(reference, model.tokenizer, answer=answer)
    ref = rtok.prompt_tokens if answer == "single" else rtok.tokens[:, :-1]
    return data, ref, corrupt, AnswerData(ref, rtok.answer_tokens, rtok.answer_positions)


def faithfulness(
    model: Model,
    circuit: Sequence[Site],
    prompts: PromptSet | PromptPairs,
    *,
    reference: PromptSet | None = None,
    metric: FaithfulnessMetric = "nl",
    answer: AnswerMode = "single",
    ablation: CircuitAblation = "mean",
    n_draws: int = 3,
    batch_size: int = 64,
    n_boot: int = 1000,
    seed: int = 0,
) -> FaithfulnessResult:
    """Faithfulness of ``circuit`` on ``prompts`` with everything outside it ablated.

    By default (``ablation="mean"``) it is Nikankin et al.'s mean-ablation faithfulness: every
    attention head and MLP outside the circuit is replaced by its mean output for its position
    over ``reference`` (default: ``prompts``; the paper uses every ``op1∘op2=`` prompt, correct or
    not). The granularity follows the circuit's sites: ``attn_head`` (layer, head) keeps one head
    (``head=None`` or ``attn_out``: the whole layer), ``mlp_out`` keeps a whole MLP, ``mlp_post``
    (layer, neuron) keeps single neurons and ablates the layer's other neurons. A layer whose
    heads / MLP the circuit does not name is ablated whole. Embeddings are never ablated.

    ``ablation`` (see :mod:`arithinterp.methods.circuit_ablation` and ``docs/methods/circuits.md``):
    ``"mean"``, ``"zero"``, ``"resample"`` (each prompt takes another reference prompt's
    activations, by a permutation seeded with ``seed``; the scores of ``n_draws`` permutations are
    averaged per prompt, and ``draw_faithfulness`` in ``meta.extra`` lists F of each draw),
    ``"counterfactual"`` (each prompt takes its pair's corrupt prompt's activations: pass
    ``prompts`` as :class:`PromptPairs`) or ``"optimal"`` (Li & Janson's constant per component
    that minimises the answer loss, learned on ``reference``).

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
    check_ablation(ablation, n_draws=n_draws, has_corrupt=isinstance(prompts, PromptPairs),
                   reference_size=None if reference is None else len(reference))
    check_answer(answer)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    circuit = list(circuit)
    heads, mlps = circuit_parts(model, circuit)
    data, ref, corrupt, ref_data = _faithfulness_inputs(model, prompts, reference, answer, ablation)
    check_reference(data.seqs, ref)
    if corrupt is not None:
        check_reference(data.seqs, corrupt)
    neurons = any(m for m in mlps)
    values = ablation_values(model, ablation, data.seqs, reference=ref, self_reference=reference is None,
                             corrupt=corrupt, neurons=neurons, n_draws=n_draws, seed=seed,
                             batch_size=batch_size, answers=ref_data)
    empty_heads, empty_mlps = circuit_parts(model, [])
    full_scores = circuit_scores(model, data, metric, values, None, None, batch_size=batch_size)
    empty_draws = circuit_scores(model, data, metric, values, empty_heads, empty_mlps, batch_size=batch_size)
    # The endpoints reuse the same runs, so F is exactly 1 or 0 there.
    keeps_all = all(len(h) == model.shape.n_heads for h in heads) and all(m is None for m in mlps)
    if keeps_all:
        circuit_draws = np.repeat(full_scores, values.n_draws, 0)
    elif (heads, mlps) == (empty_heads, empty_mlps):
        circuit_draws = empty_draws
    else:
        circuit_draws = circuit_scores(model, data, metric, values, heads, mlps, batch_size=batch_size)
    full_scores, empty_scores, circuit_scores_ = full_scores[0], empty_draws.mean(0), circuit_draws.mean(0)
    draw_f = [faithfulness_ratio(c, full_scores, e) for c, e in zip(circuit_draws, empty_draws)]
    samples = np.stack([circuit_scores_, full_scores, empty_scores])
    mean, low, high = bootstrap_ci(samples, axis=1, n_boot=n_boot, seed=seed)
    rng = np.random.default_rng(seed)
    n = samples.shape[1]
    boot = [faithfulness_ratio(*samples[:, rng.integers(0, n, n)]) for _ in range(n_boot)]
    boot_arr = np.array([b for b in boot if b is not None])
    f_low, f_high = (np.quantile(boot_arr, [0.025, 0.975]) if boot_arr.size else (None, None))
    values_da = xr.DataArray(np.asarray(mean), dims=("target",), coords={"target": np.array(_TARGETS)})
    ref_set = prompts if reference is None else reference
    meta = make_meta(
        "faithfulness", model, prompts.clean if isinstance(prompts, PromptPairs) else prompts,
        options={"circuit": [s.label for s in circuit], "metric": metric, "answer": answer,
                 "ablation": ablation, "n_draws": values.n_draws,
                 "reference_hash": (ref_set.clean if isinstance(ref_set, PromptPairs) else ref_set).hash,
                 "n_prompts": n, "n_reference": int(ref.shape[0]), "n_boot": n_boot},
        seed=seed, extra={"draw_faithfulness": draw_f},
    )
    return FaithfulnessResult(
        values=values_da, meta=meta,
        extras={"ci_low": values_da.copy(data=np.asarray(low)), "ci_high": values_da.copy(data=np.asarray(high))},
        faithfulness=faithfulness_ratio(circuit_scores_, full_scores, empty_scores),
        faithfulness_ci_low=None if f_low is None else float(f_low),
        faithfulness_ci_high=None if f_high is None else float(f_high),
    )
