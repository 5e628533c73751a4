"""First digit vs last digit (Gambardella, Iwasawa, Matsuo, ACL 2024): how sure a model is of
each answer digit when it writes the answer itself, and when it is given the correct higher
digits.

For every prompt and every answer position ``i`` (answer tokens in the order the model writes
them), two decodings are scored:

* **free-running**: greedy decoding from the prompt; at ``i`` the model has read its own
  previous answer tokens;
* **teacher-forced**: the model has read the true previous answer tokens.

At each position we record whether the argmax token is the true token, the probability of the
argmax token (the paper's *confidence*), and the probability of the true token. Where the
free-running prefix is correct the two decodings read the same tokens, so they agree there.

The fast engine uses that: one teacher-forced pass per batch gives every position whose
free-running prefix is still correct, and only the prompts that have gone wrong are decoded
further, one position per pass. ``engine="literal"`` decodes every prompt at every position
(the oracle it is tested against).

Uncertainty: over ``seeds`` (a fresh prompt set from the task spec per seed, or one bootstrap
resample per seed of a given prompt set), and optionally over Monte Carlo dropout passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import xarray as xr
from pydantic import Field, field_validator

from arithinterp.errors import MethodError
from arithinterp.methods._common import check_positive_int, make_meta
from arithinterp.methods.digit_confidence_result import (
    RECORD_METRICS,
    SUMMARY_METRICS,
    DigitConfidenceResult,
    DigitRecords,
    summary_from_records,
)
from arithinterp.methods.registry import MethodSpec, Options, RunContext, register
from arithinterp.models import Model, Site
from arithinterp.progress_bars import tqdm
from arithinterp.results import bootstrap_ci, stable_hash
from arithinterp.tasks import PromptSet, TaskSpec, TokenizedPrompts, generate, tokenize
from arithinterp.tasks.spec import MAX_SEED, REVERSED_FORMATS

__all__ = ["DigitConfidenceResult", "DigitRecords", "digit_confidence"]

Engine = Literal["fast", "literal"]
MCSites = Literal["outputs", "resid"]

#: Where MC dropout drops activations: ``outputs`` every attention and MLP output (where
#: GPT-2's residual dropout acts), ``resid`` the residual stream entering every block.
MC_SITE_KINDS: dict[str, tuple[str, ...]] = {"outputs": ("attn_out", "mlp_out"), "resid": ("resid_pre",)}

_N_BOOT = 1000  # bootstrap resamples of the prompts when there is one prompt set


def digit_confidence(
    model: Model,
    prompts: PromptSet | TaskSpec,
    *,
    seeds: Sequence[int] | None = None,
    mc_dropout: float | None = None,
    mc_samples: int = 10,
    mc_sites: MCSites = "outputs",
    engine: Engine = "fast",
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> DigitConfidenceResult:
    """Per-answer-digit accuracy and confidence, free-running greedy decoding against teacher forcing.

    Args:
        model: the model.
        prompts: a prompt set, or a task spec to generate prompt sets from. Every answer must be
            the same number of tokens, more than one (use a fixed-width format).
        seeds: uncertainty over seeds. With a ``TaskSpec``: one fresh prompt set per seed (the
            spec with ``seed=s``), reported as the mean over seeds and a 95% t-interval of that
            mean. With a ``PromptSet``: one bootstrap resample of its prompts per seed (at least
            two; the model runs once), reported as the set's mean and the 2.5 / 97.5 percentiles
            of the resample means. ``None``: the one set, with a percentile bootstrap interval
            over its prompts (1,000 resamples drawn from ``seed``).
        mc_dropout: Monte Carlo dropout probability in ``[0, 1)``; ``None`` for none. Each of
            ``mc_samples`` passes zeroes each activation of ``mc_sites`` with this probability
            (scaling the rest by ``1 / (1 - p)``), with one mask per prompt and pass that both
            decodings share. The zoo models were trained without dropout, so this perturbs a
            model that never saw dropout (the paper's LLMs likewise).
        mc_samples: stochastic passes under MC dropout.
        mc_sites: ``outputs`` (every ``attn_out`` and ``mlp_out``) or ``resid`` (every
            ``resid_pre``).
        engine: ``fast`` or ``literal`` (every prompt decoded at every position: the oracle).
        batch_size: prompts per forward pass.
        seed: seeds the MC-dropout masks and the bootstrap.
        progress: show a progress bar.

    Returns:
        A :class:`DigitConfidenceResult` over ``(digit, metric)``; its ``records`` hold every
        prompt's values.
    """
    seeds = _check_options(seeds, mc_dropout, mc_samples, mc_sites, engine, batch_size)
    sets, interval = _prompt_sets(prompts, seeds)
    tokenized = [tokenize(s, model.tokenizer, answer="multi") for s in sets]
    places, roles, several = _positions(model.tokenizer, tokenized)
    sites = _mc_sites(model, mc_sites) if mc_dropout is not None else []
    passes = mc_samples if mc_dropout is not None else 1
    batches = sum(-(-len(t) // batch_size) for t in tokenized)
    runs = []
    with tqdm(total=passes * batches, desc="digit_confidence", disable=not progress, leave=False) as bar:
        for prompt_set, tok in zip(sets, tokenized):
            dropout = None if mc_dropout is None else _Dropout(sites, float(mc_dropout), seed, prompt_set.spec.seed)
            runs.append(_score_set(model, tok, dropout, passes, engine, batch_size, bar))
    coords = {"digit": np.arange(len(places)), "metric": list(SUMMARY_METRICS),
              "digit_place": ("digit", places), "digit_role": ("digit", roles)}
    mean, low, high = _summarise([r.records for r in runs], interval, seeds, seed)
    values = xr.DataArray(mean, dims=("digit", "metric"), coords=coords)
    extras = {"ci_low": values.copy(data=low), "ci_high": values.copy(data=high)}
    if mc_dropout is not None:
        extras["mc_std"] = values.copy(data=_mc_std([r.pass_means for r in runs]))
        extras["mc_std_prompt"] = values.copy(data=np.concatenate([r.prompt_std for r in runs]).mean(axis=0))
    options = {"seeds": None if seeds is None else list(seeds), "mc_dropout": mc_dropout, "mc_samples": mc_samples,
               "mc_sites": mc_sites, "engine": engine, "batch_size": batch_size}
    meta = _meta(model, sets, interval, several, options, seed)
    records = _records(runs, sets, places, roles, meta)
    return DigitConfidenceResult(values=values, meta=meta, extras=extras, records=records)


def _meta(model: Model, sets: list[PromptSet], interval: str, several: bool, options: dict, seed: int):
    extra = {
        "order": "least significant first" if sets[0].spec.format in REVERSED_FORMATS else "most significant first",
        "positions": ("answer tokens; a token can hold several digits (see digit_place)" if several
                      else "answer tokens, one digit each"),
        "interval": _INTERVALS[interval],
        "n_prompts": [len(s) for s in sets],
        "prompt_sets": [{"seed": s.spec.seed, "hash": s.hash} for s in sets],
    }
    if options["mc_dropout"] is not None:
        extra["mc_dropout"] = (f"p={options['mc_dropout']} on {', '.join(MC_SITE_KINDS[options['mc_sites']])} of "
                               f"every layer, {options['mc_samples']} passes; a model trained without dropout "
                               "(the zoo's) never saw it")
    dataset_hash = sets[0].hash if len(sets) == 1 else stable_hash([s.hash for s in sets])
    return make_meta("digit_confidence", model, sets[0], options=options, seed=seed, extra=extra,
                     dataset_hash=dataset_hash)


# -- input checks (all before any forward pass) ---------------------------------------------------


def _check_options(seeds, mc_dropout, mc_samples, mc_sites, engine, batch_size) -> tuple[int, ...] | None:
    """The seeds as a tuple, after checking every option (``MethodError`` saying what is valid)."""
    check_positive_int("batch_size", batch_size)
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, (int, np.integer)) or mc_samples < 1:
        raise MethodError(f"mc_samples must be an int >= 1 (stochastic passes), got {mc_samples!r}")
    if mc_dropout is not None and (isinstance(mc_dropout, bool) or not isinstance(mc_dropout, (int, float))
                                   or not 0 <= mc_dropout < 1):
        raise MethodError(f"mc_dropout must be a probability in [0, 1) (or None for no MC dropout), "
                          f"got {mc_dropout!r}")
    if mc_sites not in MC_SITE_KINDS:
        raise MethodError(f"mc_sites must be one of {sorted(MC_SITE_KINDS)}, got {mc_sites!r}")
    if engine not in ("fast", "literal"):
        raise MethodError(f"engine must be 'fast' or 'literal', got {engine!r}")
    if seeds is None:
        return None
    if isinstance(seeds, (str, bytes, dict)) or not hasattr(seeds, "__iter__"):
        raise MethodError(f"seeds must be a sequence of ints such as (0, 1, 2), got {seeds!r}")
    seeds = tuple(seeds)
    if len(seeds) == 0:
        raise MethodError("seeds is empty: give at least one seed, e.g. seeds=(0, 1, 2), or seeds=None "
                          "for one prompt set with a bootstrap interval over its prompts")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s <= MAX_SEED]
    if bad:
        raise MethodError(f"seeds must be ints in 0..2**32-1, got {bad}")
    if len(set(int(s) for s in seeds)) != len(seeds):
        raise MethodError(f"seeds {list(seeds)} repeat a seed; a repeated seed repeats a prompt set")
    return tuple(int(s) for s in seeds)


_INTERVALS = {
    "prompts": f"95% percentile bootstrap over the prompts ({_N_BOOT} resamples)",
    "seeds": "95% t-interval of the mean over the seeds' prompt sets",
    "bootstrap": "95% percentile interval over bootstrap resamples of the prompts, one per seed",
}


def _prompt_sets(prompts, seeds) -> tuple[list[PromptSet], str]:
    """The prompt sets to run and the kind of interval (a key of :data:`_INTERVALS`)."""
    if isinstance(prompts, TaskSpec):
        if seeds is None:
            return [generate(prompts)], "prompts"
        sets = [generate(TaskSpec(**{**prompts.model_dump(), "seed": int(s)})) for s in seeds]
        return sets, ("seeds" if len(sets) > 1 else "prompts")
    if not isinstance(prompts, PromptSet):
        raise MethodError(f"prompts must be a PromptSet or a TaskSpec, got {type(prompts).__name__}")
    if seeds is None:
        return [prompts], "prompts"
    if len(seeds) < 2:
        raise MethodError(f"seeds={list(seeds)} bootstraps a PromptSet once, which gives no interval; give "
                          "at least two seeds (one resample each, e.g. seeds=range(200)), seeds=None for "
                          "1,000 resamples, or a TaskSpec to draw a fresh prompt set per seed")
    return [prompts], "bootstrap"


def _positions(tokenizer, tokenized: list[TokenizedPrompts]) -> tuple[list[str], list[str], bool]:
    """Per answer position: the decimal place(s) it writes, its role, and whether any token
    holds several digits. ``MethodError`` when there is only one position."""
    lengths = sorted({t.answer_len for t in tokenized})
    if len(lengths) > 1:
        raise MethodError(f"the prompt sets' answers are {lengths} tokens long; positions can only be "
                          "compared at one answer length (use a fixed-width format)")
    if lengths[0] == 1:
        spec = tokenized[0].prompts.spec
        raise MethodError(
            f"every answer is a single token for this tokenizer (format {spec.format!r}), so there is only "
            "one answer position: free-running and teacher-forced decoding read the same prompt there. "
            "digit_confidence compares the positions of multi-token answers; use a model whose tokenizer "
            "writes one token per digit, or more digits")
    reverse = tokenized[0].prompts.spec.format in REVERSED_FORMATS
    answers: set[tuple[int, ...]] = set()  # each distinct answer once
    for tok in tokenized:
        answers |= {tuple(map(int, row)) for row in tok.answer_tokens.tolist()}
    piece = {i: tokenizer.decode([i]) for row in answers for i in row}
    per_prompt = [_spans([piece[i] for i in row], reverse) for row in answers]
    top = max((p for row in per_prompt for _, places in row for p in places), default=0)
    labels, roles = [], []
    for i in range(lengths[0]):
        seen = {row[i] for row in per_prompt}
        if len(seen) > 1:
            labels.append("varies")
            roles.append("varies")
            continue
        sign, places = seen.pop()
        labels.append(_place_label(sign, places))
        roles.append(_role(sign, places, top))
    several = any(len(places) > 1 for row in per_prompt for _, places in row)
    return labels, roles, several


def _spans(pieces: list[str], reverse: bool) -> tuple[tuple[bool, tuple[int, ...]], ...]:
    """For each answer token: whether it writes a sign, and the decimal places of its digits."""
    n_digits = sum(ch.isdigit() for p in pieces for ch in p)
    j, out = 0, []
    for p in pieces:
        places = []
        for ch in p:
            if ch.isdigit():
                places.append(j if reverse else n_digits - 1 - j)
                j += 1
        out.append((any(ch in "+-" for ch in p), tuple(places)))
    return tuple(out)


def _place_label(sign: bool, places: tuple[int, ...]) -> str:
    parts = ["sign"] if sign else []
    if places:
        parts.append(f"10^{places[0]}" if len(places) == 1 else f"10^{places[0]}..10^{places[-1]}")
    return ", ".join(parts) or "no digit"


def _role(sign: bool, places: tuple[int, ...], top: int) -> str:
    if not places:
        return "sign" if sign else "no digit"
    first, last = top in places, 0 in places
    if first and last:
        return "all digits"
    return "most significant" if first else "least significant" if last else "middle"


def _mc_sites(model: Model, kind: str) -> list[Site]:
    return model.validate([Site(k, layer=layer) for layer in range(model.shape.n_layers)
                           for k in MC_SITE_KINDS[kind]])


# -- scoring -----------------------------------------------------------------------------------------


@dataclass
class _Dropout:
    """MC dropout masks, one per (prompt, pass), drawn from ``(seed, set seed, pass, row)`` so that
    they do not depend on the batch size or the engine."""

    sites: list[Site]
    p: float
    seed: int
    set_seed: int
    masks: torch.Tensor | None = None  # [batch, site, pos, d_model] of the current batch

    def draw(self, rows: range, n_pass: int, n_pos: int, d_model: int, device: torch.device) -> None:
        generator = torch.Generator()
        masks = []
        for row in rows:
            state = np.random.SeedSequence([self.seed, self.set_seed, n_pass, row]).generate_state(2)
            generator.manual_seed(int(state[0]) << 32 | int(state[1]))
            masks.append(torch.rand((len(self.sites), n_pos, d_model), generator=generator) >= self.p)
        self.masks = torch.stack(masks).to(device)

    def patches(self, rows: torch.Tensor | None, n_pos: int) -> dict:
        assert self.masks is not None
        masks = self.masks if rows is None else self.masks[rows]
        scale = 1.0 / (1.0 - self.p)

        def drop(j: int):
            def fn(activation: torch.Tensor) -> torch.Tensor:
                return activation * masks[:, j, :n_pos].to(activation.dtype) * scale
            return fn

        return {site: drop(j) for j, site in enumerate(self.sites)}


@dataclass
class _SetRun:
    records: np.ndarray  # [prompt, digit, RECORD_METRICS], mean over passes
    true: np.ndarray  # [prompt, digit] the answer tokens
    decoded: np.ndarray  # [prompt, digit] free-running tokens of the first pass
    pass_means: np.ndarray  # [pass, digit, SUMMARY_METRICS]
    prompt_std: np.ndarray  # [prompt, digit, SUMMARY_METRICS] std over the passes (NaN with one)


def _score_set(model: Model, tok: TokenizedPrompts, dropout: _Dropout | None, passes: int, engine: str,
               batch_size: int, bar) -> _SetRun:
    n, length = len(tok), tok.answer_len
    total = np.zeros((n, length, len(RECORD_METRICS)))
    decoded = np.zeros((n, length), dtype=np.int64)
    pass_means = np.zeros((passes, length, len(SUMMARY_METRICS)))
    squares = np.zeros((n, length, len(SUMMARY_METRICS)))
    prompt, answers = tok.prompt_tokens.to(model.device), tok.answer_tokens.to(model.device)
    for k in range(passes):
        this = np.zeros_like(total)
        for start in range(0, n, batch_size):
            rows = range(start, min(n, start + batch_size))
            if dropout is not None:
                dropout.draw(rows, k, tok.prompt_len + length - 1, model.shape.d_model, model.device)
            rec, dec = _score_batch(model, prompt[start:rows.stop], answers[start:rows.stop], dropout, engine)
            this[start:rows.stop] = rec
            if k == 0:
                decoded[start:rows.stop] = dec
            bar.update(1)
        total += this
        summary = summary_from_records(this)
        squares += summary**2
        pass_means[k] = summary.mean(axis=0)
    mean = summary_from_records(total / passes)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.maximum(squares - passes * mean**2, 0) / (passes - 1)
    return _SetRun(total / passes, tok.answer_tokens.numpy().astype(np.int64), decoded, pass_means, np.sqrt(var))


def _score_batch(model: Model, prompt: torch.Tensor, answers: torch.Tensor, dropout: _Dropout | None,
                 engine: str) -> tuple[np.ndarray, np.ndarray]:
    """Records ``[batch, digit, RECORD_METRICS]`` and the free-running tokens ``[batch, digit]``."""
    n_prompt, length = prompt.shape[1], answers.shape[1]
    forced = _read(_logits(model, torch.cat([prompt, answers[:, :-1]], 1), dropout, None)[:, n_prompt - 1:],
                   answers)
    free = [t.clone() for t in forced]  # correct, confidence, p_true, argmax
    decoded = torch.zeros_like(answers)
    for i in range(length):
        if engine == "fast":  # a correct prefix reads what teacher forcing read: nothing to run
            rows = (decoded[:, :i] != answers[:, :i]).any(1).nonzero().squeeze(1)
        else:
            rows = torch.arange(len(answers), device=answers.device)
        if len(rows):
            seq = torch.cat([prompt[rows], decoded[rows, :i]], 1)
            step = _read(_logits(model, seq, dropout, rows)[:, -1:], answers[rows, i:i + 1])
            for mine, new in zip(free, step):
                mine[rows, i] = new[:, 0]
        decoded[:, i] = free[3][:, i]
    records = torch.stack([*free[:3], *forced[:3]], -1)
    return records.cpu().numpy(), decoded.cpu().numpy()


def _logits(model: Model, tokens: torch.Tensor, dropout: _Dropout | None, rows: torch.Tensor | None) -> torch.Tensor:
    patches = None if dropout is None else dropout.patches(rows, tokens.shape[1])
    return model.logits(tokens, patches)


def _read(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Correct (float), confidence, p(true) and argmax at each position, from next-token logits."""
    probs = torch.softmax(logits.double(), dim=-1)
    argmax = probs.argmax(-1)
    confidence = probs.gather(-1, argmax.unsqueeze(-1)).squeeze(-1)
    p_true = probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (argmax == targets).double(), confidence, p_true, argmax


# -- summary -------------------------------------------------------------------------------------


def _summarise(records: list[np.ndarray], interval: str, seeds, seed: int) -> tuple[np.ndarray, ...]:
    """Mean, low and high ``[digit, SUMMARY_METRICS]`` over the prompt sets, as ``interval`` says."""
    per_prompt = [summary_from_records(r) for r in records]
    if interval == "prompts":
        return bootstrap_ci(per_prompt[0], axis=0, n_boot=_N_BOOT, seed=seed)
    if interval == "seeds":
        from scipy import stats

        means = np.stack([p.mean(axis=0) for p in per_prompt])
        k = len(means)
        mean = means.mean(axis=0)
        half = stats.t.ppf(0.975, k - 1) * means.std(axis=0, ddof=1) / np.sqrt(k)
        return mean, mean - half, mean + half
    data = per_prompt[0]
    boots = np.stack([data[np.random.default_rng(int(s)).integers(0, len(data), len(data))].mean(axis=0)
                      for s in seeds])
    low, high = np.quantile(boots, [0.025, 0.975], axis=0)
    return data.mean(axis=0), low, high


def _mc_std(pass_means: list[np.ndarray]) -> np.ndarray:
    """Standard deviation over MC passes of each position's mean, pooled over prompt sets
    (NaN with one pass)."""
    if pass_means[0].shape[0] < 2:
        return np.full(pass_means[0].shape[1:], np.nan)
    return np.sqrt(np.mean([m.var(axis=0, ddof=1) for m in pass_means], axis=0))


def _records(runs: list[_SetRun], sets: list[PromptSet], places, roles, meta) -> DigitRecords:
    coords = {
        "prompt": np.arange(sum(len(s) for s in sets)),
        "digit": np.arange(len(places)),
        "seed": ("prompt", np.concatenate([np.full(len(s), s.spec.seed, dtype=np.int64) for s in sets])),
        "prompt_id": ("prompt", np.concatenate([s.frame["prompt_id"].to_numpy(dtype=np.int64) for s in sets])),
        "digit_place": ("digit", places),
        "digit_role": ("digit", roles),
    }
    values = xr.DataArray(np.concatenate([r.records for r in runs]), dims=("prompt", "digit", "metric"),
                          coords={**coords, "metric": list(RECORD_METRICS)})
    pair = ("prompt", "digit")
    extras = {"true_token": xr.DataArray(np.concatenate([r.true for r in runs]), dims=pair, coords=coords),
              "decoded": xr.DataArray(np.concatenate([r.decoded for r in runs]), dims=pair, coords=coords)}
    return DigitRecords(values=values, meta=meta, extras=extras)


# -- registration ---------------------------------------------------------------------------------


class DigitConfidenceOptions(Options):
    """Options of :func:`digit_confidence`. In a pipeline, ``seeds`` draws a fresh prompt set from
    the step's task per seed (the task's ``n`` prompts each)."""

    seeds: tuple[int, ...] | None = None
    mc_dropout: float | None = Field(None, ge=0, lt=1)
    mc_samples: int = Field(10, ge=1)
    mc_sites: MCSites = "outputs"
    engine: Engine = "fast"
    batch_size: int = Field(256, ge=1)

    @field_validator("seeds")
    @classmethod
    def _check_seeds(cls, seeds: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if seeds is not None:
            _check_options(seeds, None, 1, "outputs", "fast", 1)
        return seeds


def _run(ctx: RunContext, options: DigitConfidenceOptions) -> DigitConfidenceResult:
    prompts = ctx.spec if options.seeds is not None else ctx.prompts
    return digit_confidence(ctx.model, prompts, **_SPEC.keywords(options), seed=ctx.seed, progress=ctx.progress)


def _check(ctx: RunContext, options: DigitConfidenceOptions) -> None:
    _positions(ctx.model.tokenizer, [ctx.tokens("multi")])
    if options.mc_dropout is not None:
        _mc_sites(ctx.model, options.mc_sites)


_SPEC = register(MethodSpec(name="digit_confidence", function=digit_confidence, inputs="prompts",
                            result=DigitConfidenceResult, options=DigitConfidenceOptions, run=_run, check=_check))
