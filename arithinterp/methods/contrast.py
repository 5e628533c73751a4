"""The contrast core of the pair methods: one validated clean/corrupt comparison per call.

Patching, attribution, edge attribution, path patching, mediation and circuit
discovery all compare a clean run with a corrupt one. They start and end the
same way, so both ends live here:

* :func:`contrast` checks the options they share (answer mode, metric,
  direction, normalisation, batch size, bootstrap resamples) before anything
  runs, raising :class:`~arithinterp.errors.MethodError` with what is valid,
  and tokenizes the pairs once into a :class:`Contrast`. Given a
  :class:`~arithinterp.methods.metrics.PairBatch` it keeps the batch's dataset
  hash and refuses a batch tokenized with another answer mode than asked.
* :func:`map_parts` runs a per-batch function over the pairs' batches, here or on an
  executor's workers (:mod:`arithinterp.distributed`), and returns the outputs in pair
  order: the batches are the same wherever they run, so a sharded sweep merges into the
  serial run's numbers bit for bit, and the bootstrap (in :func:`package`) comes after.
* :func:`package` turns per-pair scores ``[cells..., pair]`` into a result's
  parts: optional normalisation (0 = corrupt run, 1 = clean run), the mean and
  bootstrap interval over pairs, labeled values with ``ci_low`` / ``ci_high``
  extras, and meta that records the dataset hash.

Public methods keep flat keyword arguments and build their ``Contrast``
internally; it is not part of the public API.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

import numpy as np
import torch
import xarray as xr

from arithinterp.errors import MethodError, TokenizationError
from arithinterp.methods._common import make_meta
from arithinterp.methods.metrics import (
    METRICS,
    AnswerMode,
    MetricFn,
    PairBatch,
    normalise,
    resolve_metric,
    tokenize_pairs,
)
from arithinterp.models import Model
from arithinterp.progress_bars import tqdm
from arithinterp.results import ResultMeta, bootstrap_ci
from arithinterp.tasks import PromptPairs

if TYPE_CHECKING:
    from arithinterp.distributed.executor import Executor

T = TypeVar("T")

Direction = Literal["denoise", "noise"]
DIRECTIONS: tuple[str, ...] = get_args(Direction)
ANSWER_MODES: tuple[str, ...] = get_args(AnswerMode)
Scale = Literal["patched", "effect"]
"""How :func:`package` normalises: ``"patched"`` maps a patched run's metric to
``(x - corrupt) / (clean - corrupt)``; ``"effect"`` maps a change of the metric
to ``x / (clean - corrupt)``."""


@dataclass(frozen=True)
class Contrast:
    """The validated comparison one call of a pair method works on.

    ``batch``: the tokenized pairs; ``answer``: the mode they were tokenized
    with; ``metric_name`` / ``metric_fn``: the resolved metric; ``direction``:
    ``"denoise"`` (clean patched into the corrupt run) or ``"noise"`` (the
    reverse); ``normalize``: whether :func:`package` rescales;
    ``dataset_hash``: the hash of the clean prompts (``None`` for a batch built
    by hand).
    """

    batch: PairBatch
    answer: AnswerMode
    metric_name: str
    metric_fn: MetricFn
    direction: Direction
    normalize: bool
    dataset_hash: str | None

    @property
    def n_pairs(self) -> int:
        return len(self.batch)

    @property
    def options(self) -> dict[str, Any]:
        """The shared options as a result's ``meta.options`` records them."""
        return {"direction": self.direction, "metric": self.metric_name, "normalize": self.normalize,
                "answer": self.answer, "n_pairs": self.n_pairs}

    def parts(self, batch_size: int) -> Iterator[PairBatch]:
        """The pairs in consecutive slices of at most ``batch_size``."""
        for start in range(0, self.n_pairs, batch_size):
            yield self.batch.slice(start, start + batch_size)

    def source_target(self, part: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(source, target)`` tokens: activations come from the source run and go into the target run."""
        return (part.clean, part.corrupt) if self.direction == "denoise" else (part.corrupt, part.clean)

    def score(self, logits: torch.Tensor, part: PairBatch) -> torch.Tensor:
        """The metric per pair (float64) from full-sequence logits ``[pair, pos, vocab]``."""
        return self.metric_fn(logits[:, part.answer_positions], part.clean_answer, part.corrupt_answer).double()


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise MethodError(f"{name} must be a positive int, got {value!r}")


def check_answer(answer: object) -> None:
    """Raise :class:`MethodError` unless ``answer`` is an answer mode."""
    if answer not in ANSWER_MODES:
        raise MethodError(f"answer must be one of {', '.join(map(repr, ANSWER_MODES))}, got {answer!r}")


def check_direction(direction: object) -> None:
    """Raise :class:`MethodError` unless ``direction`` is ``"denoise"`` or ``"noise"``."""
    if direction not in DIRECTIONS:
        raise MethodError(f"direction must be 'denoise' or 'noise', got {direction!r}")


def _metric(metric: object, extra: Mapping[str, MetricFn], refused: Mapping[str, str]) -> tuple[str, MetricFn]:
    if callable(metric):
        return resolve_metric(metric)
    if isinstance(metric, str) and metric in refused:
        raise MethodError(f"metric {metric!r} {refused[metric]}")
    if isinstance(metric, str) and metric in extra:
        return metric, extra[metric]
    try:
        return resolve_metric(metric)  # type: ignore[arg-type]
    except (MethodError, TypeError):
        valid = [m for m in (*METRICS, *extra) if m not in refused]
        raise MethodError(f"unknown metric {metric!r}; valid: {', '.join(valid)} or a callable") from None


def check_metric_shape(metric_fn: MetricFn, batch: PairBatch, d_vocab: int) -> None:
    """Call a user's metric once on placeholder logits for two pairs (no forward pass) and
    raise :class:`MethodError` unless it returns one number per pair."""
    m = min(2, len(batch))
    logits = torch.zeros(m, batch.clean_answer.shape[1], d_vocab)
    try:
        out = metric_fn(logits, batch.clean_answer[:m], batch.corrupt_answer[:m])
    except Exception as err:  # the user's code: any failure means it does not fit the contract
        raise MethodError(
            f"the metric raised {type(err).__name__}: {err} when called as fn(logits [pair, answer "
            "token, vocab], clean_answer [pair, answer token], corrupt_answer [pair, answer token])"
        ) from err
    shape = tuple(getattr(out, "shape", ()))
    if not isinstance(out, torch.Tensor) or shape != (m,):
        raise MethodError(
            f"a metric must return one value per pair (a tensor of shape [pair]); for {m} pairs "
            f"it returned {type(out).__name__} of shape {shape}"
        )


def _checked_batch(batch: PairBatch, answer: str) -> PairBatch:
    if batch.answer is not None and batch.answer != answer:
        raise MethodError(
            f"the PairBatch was tokenized with answer={batch.answer!r} but answer={answer!r} was asked; "
            f"pass answer={batch.answer!r} or tokenize the pairs again with answer={answer!r}"
        )
    if batch.clean.shape != batch.corrupt.shape:
        raise TokenizationError(
            f"clean tokens have shape {tuple(batch.clean.shape)} and corrupt tokens "
            f"{tuple(batch.corrupt.shape)}; pairs need equal counts and lengths"
        )
    if batch.clean_answer.shape != batch.corrupt_answer.shape or batch.clean_answer.shape[0] != len(batch):
        raise TokenizationError(
            f"answers have shapes {tuple(batch.clean_answer.shape)} (clean) and "
            f"{tuple(batch.corrupt_answer.shape)} (corrupt) for {len(batch)} pairs"
        )
    return batch


def contrast(
    model: Model,
    pairs: PromptPairs | PairBatch,
    *,
    answer: AnswerMode = "multi",
    metric: str | MetricFn = "logit_diff",
    direction: Direction = "denoise",
    normalize: bool = True,
    batch_size: int | None = None,
    n_boot: int | None = None,
    extra_metrics: Mapping[str, MetricFn] | None = None,
    refused_metrics: Mapping[str, str] | None = None,
) -> Contrast:
    """Validate the shared options and tokenize ``pairs`` once.

    Every option is checked before tokenizing, and tokenizing runs no forward
    pass; ``batch_size`` and ``n_boot`` are checked when given. ``extra_metrics``
    names metrics a method accepts beyond the built-in ones (``relative_prob``
    for patching); ``refused_metrics`` maps a built-in metric the method cannot
    use to the reason (``accuracy`` has no gradient).

    Raises :class:`MethodError` for a bad option, an input that is neither
    ``PromptPairs`` nor ``PairBatch``, or a ``PairBatch`` tokenized with another
    answer mode; :class:`TokenizationError` for pairs that cannot be compared.
    """
    check_direction(direction)
    check_answer(answer)
    if not isinstance(normalize, (bool, np.bool_)):
        raise MethodError(f"normalize must be True or False, got {normalize!r}")
    for name, value in (("batch_size", batch_size), ("n_boot", n_boot)):
        if value is not None:
            _positive_int(name, value)
    metric_name, metric_fn = _metric(metric, extra_metrics or {}, refused_metrics or {})
    if isinstance(pairs, PairBatch):
        batch = _checked_batch(pairs, answer)
        dataset_hash = batch.dataset_hash
    elif isinstance(pairs, PromptPairs):
        batch = tokenize_pairs(pairs, model.tokenizer, answer=answer)
        dataset_hash = pairs.clean.hash
    else:
        raise MethodError(
            f"pairs must be PromptPairs (arithinterp.tasks.make_pairs) or a PairBatch "
            f"(arithinterp.methods.tokenize_pairs), got {type(pairs).__name__}"
        )
    if len(batch) == 0:
        raise TokenizationError("no pairs to compare")
    if callable(metric):
        check_metric_shape(metric_fn, batch, model.shape.d_vocab)
    return Contrast(batch=batch, answer=answer, metric_name=metric_name, metric_fn=metric_fn,
                    direction=direction, normalize=bool(normalize), dataset_hash=dataset_hash)


def map_parts(fn: Callable[[Model, PairBatch], T], parts: Sequence[PairBatch], *, model: Model,
              executor: Executor | None = None, desc: str = "", progress: bool = False) -> list[T]:
    """``[fn(model, part) for part in parts]``: here, or on ``executor``'s workers.

    ``parts`` are the batches of one call (:meth:`Contrast.parts`); each batch is one unit of
    work, so the forward and backward passes see the same rows whichever executor runs them,
    and the outputs come back in pair order. On an executor ``fn`` runs on each worker's own
    copy of ``model`` (loaded once per worker), so it must take everything that depends on the
    model (weights, a functional forward) from the model it is given, and return host tensors.
    Locally a progress bar counts the batches; an executor reports its workers' progress.
    """
    if executor is None:
        return [fn(model, part) for part in tqdm(parts, desc=desc, disable=not progress, leave=False)]
    return executor.map(fn, parts, model=model, desc=desc, progress=progress)


def package(
    con: Contrast,
    model: Model | None,
    method: str,
    per_pair: torch.Tensor | np.ndarray,
    *,
    dims: tuple[str, ...],
    coords: Mapping[str, Any],
    clean_mean: float | None,
    corrupt_mean: float | None,
    options: Mapping[str, Any],
    n_boot: int,
    seed: int,
    extra: Mapping[str, Any] | None = None,
    scale: Scale = "patched",
) -> tuple[xr.DataArray, dict[str, xr.DataArray], ResultMeta]:
    """Per-pair scores → normalised → mean and bootstrap CI over pairs → labeled parts of a result.

    ``per_pair``: ``[cells..., pair]`` (or ``[cell, pair]`` with the cells in
    ``dims`` order), the pair axis last. With ``con.normalize`` the scores are
    rescaled by ``scale`` (see :data:`Scale`) with the clean and corrupt means.
    A ``pos`` dim gets a ``pos_token`` coordinate from the batch unless
    ``coords`` has one. Returns ``(values, {"ci_low", "ci_high"}, meta)``;
    ``meta.extra`` holds the clean and corrupt means (left out when ``None``, for
    a method without that baseline, which cannot normalise) and ``extra``.
    """
    if con.normalize:
        if clean_mean is None or corrupt_mean is None:
            raise MethodError("normalising needs the clean and corrupt means")
        if scale == "effect":
            per_pair = normalise(per_pair, clean_mean - corrupt_mean, 0.0)
        else:
            per_pair = normalise(per_pair, clean_mean, corrupt_mean)
    samples = per_pair.detach().cpu().numpy() if isinstance(per_pair, torch.Tensor) else np.asarray(per_pair)
    shape = tuple(len(coords[d]) for d in dims)
    if samples.shape != (*shape, samples.shape[-1]):
        samples = samples.reshape(*shape, samples.shape[-1])
    mean, low, high = bootstrap_ci(samples, axis=-1, n_boot=n_boot, seed=seed)
    coords = dict(coords)
    if "pos" in dims and "pos_token" not in coords:
        coords["pos_token"] = ("pos", np.array(con.batch.str_tokens)[np.asarray(coords["pos"])])
    values = xr.DataArray(np.asarray(mean), dims=dims, coords=coords)
    extras = {"ci_low": values.copy(data=np.asarray(low)), "ci_high": values.copy(data=np.asarray(high))}
    baselines = {} if clean_mean is None else {"clean_mean": clean_mean, "corrupt_mean": corrupt_mean}
    meta = make_meta(method, model, options=dict(options), seed=seed, dataset_hash=con.dataset_hash,
                     extra={**baselines, **(extra or {})})
    return values, extras, meta
