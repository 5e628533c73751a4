"""The logit lens (nostalgebraist 2020): read the residual stream through the unembedding.

At lens depth ``d`` the residual stream after ``d`` blocks (``resid_pre`` of
block ``d``; for ``d = n_layers`` the final residual stream) goes through the
model's final norm and unembedding. At the last depth this is exactly the
model's own output, which the tests check.

For every prompt, depth and position the result holds the probability and
the rank of the token that actually comes next in the teacher-forced
sequence (prompt followed by the answer), so answer positions show when the
answer becomes decodable. The coordinate ``is_answer`` marks them.

For models whose tokenizer writes every number as one token (the zoo's
``add-2d-tok`` and ``modadd-113``), ``logit_lens(..., numbers=True)`` also
reads the lens restricted to the number tokens (softmax over numbers only),
and :func:`number_lens` returns the logit vector over the numbers at the
answer position, the input the Fourier methods take.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
import xarray as xr
from pydantic import Field

from arithinterp.errors import MethodError, TokenizationError
from arithinterp.methods._common import check_positive_int, make_meta, token_batches
from arithinterp.methods.registry import MethodSpec, Options, ReportView, RunContext, register
from arithinterp.models import Model, Site
from arithinterp.models.site import depth_site
from arithinterp.progress_bars import tqdm
from arithinterp.results import Result
from arithinterp.tasks import (
    PromptSet,
    TaskSpec,
    detect_number_tokenization,
    single_token_id,
    tokenize,
)

#: Maps the stacked residual stream ``[batch, layer, pos, d_model]`` to lens logits.
Readout = Callable[[torch.Tensor], torch.Tensor]


def lens_sites(model: Model) -> list[Site]:
    """The residual-stream sites read at depths ``0..n_layers``."""
    n = model.shape.n_layers
    return [depth_site(layer, n) for layer in range(n + 1)]


def depth_coords(n_layers: int) -> dict:
    """The coordinates of a lens depth axis: ``layer`` (``0..n_layers``), its residual
    ``site`` label (``L0 pre`` ... ``L<n-1> post``) and the display ``layer_label``."""
    return {
        "layer": np.arange(n_layers + 1),
        "site": ("layer", np.array([depth_site(k, n_layers).label for k in range(n_layers + 1)])),
        "layer_label": ("layer", np.array(["embed"] + [f"after L{i}" for i in range(n_layers)])),
    }


class LensResult(Result):
    """Logit-lens probability of the next token.

    ``values``: dims ``(prompt, layer, pos)``; ``layer`` is the lens depth
    (number of blocks applied, ``0..n_layers``; coordinate ``site`` names the
    residual stream read, ``L0 pre`` ... ``L<n-1> post``, and ``layer_label``
    is its display name), ``pos`` the position whose next-token prediction is
    read. Coordinates: ``next_token`` (the token predicted at that position,
    from the first prompt), ``is_answer`` (whether it is an answer token). Extras: ``rank`` (0 =
    top-1) and ``top_tokens`` (the top-k decoded tokens, space-separated);
    with ``numbers=...`` also ``number_prob`` and ``number_rank``: the same
    read with the softmax restricted to the number tokens (NaN where the next
    token is not one of them).
    """

    metric_name = "prob"

    @property
    def answer(self) -> xr.DataArray:
        """The lens restricted to answer positions."""
        return self.values.isel(pos=np.flatnonzero(self.values.coords["is_answer"].values))

    def plot(self) -> go.Figure:
        mean = self.values.mean("prompt")
        pos_labels = [
            f"{p}:{t}{'*' if a else ''}"
            for p, t, a in zip(
                mean.coords["pos"].values,
                mean.coords["next_token"].values,
                mean.coords["is_answer"].values,
            )
        ]
        hover = None
        if "top_tokens" in self.extras:
            hover = self.extras["top_tokens"].isel(prompt=0).transpose("layer", "pos").values
        fig = go.Figure(
            go.Heatmap(
                z=mean.transpose("layer", "pos").values,
                x=pos_labels,
                y=list(mean.coords["layer_label"].values),
                zmin=0,
                zmax=1,
                colorscale="Viridis",
                customdata=hover,
                hovertemplate="depth %{y}<br>predicting %{x}<br>p = %{z:.3f}"
                + ("<br>top (prompt 0): %{customdata}" if hover is not None else "")
                + "<extra></extra>",
                colorbar={"title": "p(next)"},
            )
        )
        fig.update_layout(
            title=f"logit lens: {self.meta.model} (mean over {self.values.sizes['prompt']} prompts; * = answer)",
            xaxis_title="position: token it predicts",
            yaxis_title="lens depth",
        )
        return fig

    @classmethod
    def example(cls) -> LensResult:
        rng = np.random.default_rng(0)
        probs = rng.random((4, 3, 5))
        values = xr.DataArray(probs, dims=("prompt", "layer", "pos"), coords=_coords(
            n_prompts=4, n_layers=2, targets=["1", "+", "2", "=", "3"], answer_len=1
        ))
        rank = xr.DataArray(rng.integers(0, 9, probs.shape), dims=values.dims, coords=values.coords)
        top = xr.DataArray(np.full(probs.shape, "1 2 3"), dims=values.dims, coords=values.coords)
        return cls(values=values, meta=make_meta("logit_lens", None), extras={"rank": rank, "top_tokens": top})


class NumberLensResult(Result):
    """The lens at the answer position, restricted to the number tokens.

    ``values``: dims ``(prompt, layer, token)``, the lens logits of each
    number token (the ``token`` coordinate is the number itself) read at the
    position that predicts the answer, at lens depth ``layer`` (``0..n_layers``;
    coordinate ``site`` as in :class:`LensResult`).
    This is the vector over numbers that the Fourier methods take. Coordinates:
    ``layer_label``, ``answer`` (per prompt). Extras over ``(prompt, layer)``:
    ``answer_prob`` (softmax over the number tokens only) and ``answer_rank``
    (0 = the answer is the top number).
    """

    metric_name = "logit"

    @property
    def probs(self) -> xr.DataArray:
        """Softmax over the number tokens."""
        z = self.values - self.values.max("token")
        e = np.exp(z)
        return e / e.sum("token")

    @property
    def argmax(self) -> xr.DataArray:
        """The top number per (prompt, layer)."""
        return self.values.idxmax("token")

    def plot(self) -> go.Figure:
        acc = (self.extras["answer_rank"] == 0).mean("prompt")
        prob = self.extras["answer_prob"].mean("prompt")
        labels = list(self.values.coords["layer_label"].values)
        fig = go.Figure([
            go.Scatter(x=labels, y=acc.values, mode="lines+markers", name="answer is top number"),
            go.Scatter(x=labels, y=prob.values, mode="lines+markers", name="p(answer | numbers)"),
        ])
        fig.update_layout(
            title=f"number lens: {self.meta.model} ({self.values.sizes['prompt']} prompts)",
            xaxis_title="lens depth", yaxis_range=[0, 1],
        )
        return fig

    @classmethod
    def example(cls) -> NumberLensResult:
        rng = np.random.default_rng(0)
        numbers = np.arange(7)
        answers = rng.integers(0, 7, 4)
        logits = rng.normal(size=(4, 3, 7))
        return _number_result(logits, numbers, answers, n_layers=2,
                              meta=make_meta("number_lens", None))


def _number_result(
    logits: np.ndarray, numbers: np.ndarray, answers: np.ndarray, *, n_layers: int, meta
) -> NumberLensResult:
    coords = {
        "prompt": np.arange(logits.shape[0]),
        **depth_coords(n_layers),
        "token": numbers,
        "answer": ("prompt", answers),
    }
    values = xr.DataArray(logits, dims=("prompt", "layer", "token"), coords=coords)
    col = np.searchsorted(numbers, answers) if np.all(np.diff(numbers) > 0) else np.array(
        [int(np.flatnonzero(numbers == a)[0]) for a in answers]
    )
    target = np.take_along_axis(logits, col[:, None, None], axis=-1)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    tlogp = np.take_along_axis(logp, col[:, None, None], axis=-1)[..., 0]
    sub = {"prompt": coords["prompt"], "layer": coords["layer"]}
    extras = {
        "answer_prob": xr.DataArray(np.exp(tlogp), dims=("prompt", "layer"), coords=sub),
        "answer_rank": xr.DataArray((logits > target).sum(-1), dims=("prompt", "layer"), coords=sub),
    }
    return NumberLensResult(values=values, meta=meta, extras=extras)


def number_lens(
    model: Model,
    prompts: PromptSet,
    *,
    numbers: bool | Sequence[int] = True,
    readout: Readout | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> NumberLensResult:
    """The logit vector over the number tokens at the answer position, per prompt and depth.

    Args:
        model: a model whose tokenizer writes each number as one token.
        prompts: a task with single-token answers.
        numbers: ``True`` for every single-token number of the tokenizer, or the numbers to keep.
        readout: how the residual streams become logits (default: the logit
            lens, final norm then unembedding; a tuned lens passes its own).
        batch_size: prompts per forward pass.
        progress: show a progress bar.

    Raises TokenizationError when the tokenizer has no single-token numbers
    covering the answers.
    """
    values, ids = number_token_ids(model, prompts, numbers)
    tokenized = tokenize(prompts, model.tokenizer, answer="single")
    pos = int(tokenized.answer_positions[0])
    readout = readout or _readout(model)
    sites = lens_sites(model)
    index = torch.as_tensor(ids, device=model.device)
    out = []
    for tokens, _ in tqdm(
        token_batches(tokenized, batch_size), desc="number lens", disable=not progress, leave=False
    ):
        _, cache = model.run_with_cache(tokens, sites)
        resid = torch.stack([cache[s][:, pos] for s in sites], dim=1)  # [b, layer, d]
        with torch.no_grad():
            out.append(readout(resid).double()[..., index].cpu())
    answers = np.array([int(a) for a in prompts.answers], dtype=np.int64)
    options: dict = {"batch_size": batch_size}
    options["numbers"] = True if numbers is True else [int(n) for n in numbers]
    meta = make_meta("number_lens", model, prompts, options=options)
    return _number_result(
        torch.cat(out).numpy(), values, answers, n_layers=model.shape.n_layers, meta=meta
    )


def _coords(*, n_prompts: int, n_layers: int, targets: list[str], answer_len: int) -> dict:
    n_pos = len(targets)
    return {
        "prompt": np.arange(n_prompts),
        **depth_coords(n_layers),
        "pos": np.arange(n_pos),
        "next_token": ("pos", np.array(targets)),
        "is_answer": ("pos", np.arange(n_pos) >= n_pos - answer_len),
    }


def number_token_ids(
    model: Model, prompts: PromptSet | None = None, numbers: bool | Sequence[int] = True
) -> tuple[np.ndarray, np.ndarray]:
    """The numbers a number-level tokenizer writes as one token, and their token ids.

    ``numbers=True`` takes every single-token number ``0..N-1`` of the
    tokenizer; a sequence names them. Raises :class:`TokenizationError` when
    one of them is not a single token, or (given ``prompts``) when an answer
    is not among them, so the lens can score it.
    """
    tok = model.tokenizer
    if numbers is True:
        info = detect_number_tokenization(tok)
        if info.kind != "number" or info.single_token_numbers is None:
            raise TokenizationError(
                f"numbers=True needs a number-level tokenizer (every number one token); "
                f"{model.name} writes numbers as {info.kind!r} tokens with single-token "
                f"numbers {info.single_token_numbers}. Use a number-token model "
                "(zoo:add-2d-tok, zoo:modadd-113) or pass the numbers explicitly"
            )
        values = np.asarray(info.single_token_numbers, dtype=np.int64)
    else:
        values = np.asarray(list(numbers), dtype=np.int64)
        if values.ndim != 1 or values.size == 0 or len(np.unique(values)) != values.size:
            raise TokenizationError("numbers must be a non-empty sequence of distinct integers")
    ids = np.array([single_token_id(tok, str(int(n))) for n in values], dtype=np.int64)
    if prompts is not None:
        known = set(values.tolist())
        missing = sorted({a for a in prompts.answers if not a.strip().isdigit() or int(a) not in known})
        if missing:
            raise TokenizationError(
                f"answers {missing[:10]}{' ...' if len(missing) > 10 else ''} are not among "
                f"the single-token numbers {values.min()}..{values.max()} of {model.name}; "
                "the number lens scores an answer only among number tokens"
            )
    return values, ids


def _readout(model: Model) -> Readout:
    return lambda resid: model.unembed(resid)


def logit_lens(
    model: Model,
    prompts: PromptSet,
    *,
    k: int = 5,
    numbers: bool | Sequence[int] = False,
    batch_size: int = 256,
    progress: bool = True,
) -> LensResult:
    """Probability and rank of the next token at every lens depth and position.

    Args:
        model: the model.
        prompts: a generated task; the answer follows each prompt (teacher forcing).
        k: how many top decoded tokens to record per cell.
        numbers: also read the lens restricted to number tokens (extras
            ``number_prob``, ``number_rank``): ``True`` for every single-token
            number of the tokenizer, or the numbers to keep. Needs a
            number-level tokenizer covering the answers (TokenizationError otherwise).
        batch_size: prompts per forward pass.
        progress: show a progress bar.
    """
    return run_lens(
        model, prompts, _readout(model), method="logit_lens", k=k, numbers=numbers,
        batch_size=batch_size, progress=progress,
    )


def run_lens(
    model: Model,
    prompts: PromptSet,
    readout: Readout,
    *,
    method: str,
    k: int = 5,
    numbers: bool | Sequence[int] = False,
    batch_size: int = 256,
    progress: bool = True,
    extra_meta: dict | None = None,
) -> LensResult:
    """The lens loop shared by the logit lens and the tuned lens: ``readout``
    maps the stacked residual streams to logits."""
    check_positive_int("k", k)
    number_ids = None
    if numbers is not False:
        _, ids = number_token_ids(model, prompts, numbers)
        number_ids = torch.as_tensor(ids, device=model.device)
        # token id -> index among the numbers (-1: not a number)
        where = torch.full((model.shape.d_vocab,), -1, dtype=torch.long, device=model.device)
        where[number_ids] = torch.arange(len(ids), device=model.device)
    tokenized = tokenize(prompts, model.tokenizer, answer="multi")
    sites = lens_sites(model)
    vocab = model.tokenizer.convert_ids_to_tokens(list(range(model.shape.d_vocab)))
    vocab = np.array([str(t) for t in vocab], dtype=object)
    probs, ranks, tops, nprobs, nranks = [], [], [], [], []
    for tokens, _ in tqdm(
        token_batches(tokenized, batch_size), desc=method.replace("_", " "), disable=not progress,
        leave=False,
    ):
        _, cache = model.run_with_cache(tokens, sites)
        resid = torch.stack([cache[s] for s in sites], dim=1)[:, :, :-1]  # [b, layer, pos, d]
        with torch.no_grad():
            logits = readout(resid).double()
        logp = torch.log_softmax(logits, dim=-1)
        target = tokens[:, 1:].unsqueeze(1).expand(-1, len(sites), -1)
        target_logp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        probs.append(target_logp.exp().cpu())
        ranks.append((logp > target_logp.unsqueeze(-1)).sum(-1).cpu())
        top_ids = logp.topk(min(k, logp.shape[-1]), dim=-1).indices.cpu().numpy()
        tops.append(np.apply_along_axis(lambda ids: " ".join(vocab[ids]), -1, top_ids))
        if number_ids is not None:
            nlogp = torch.log_softmax(logits[..., number_ids], dim=-1)
            idx = where[target]
            t = nlogp.gather(-1, idx.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            nan = torch.tensor(float("nan"), dtype=torch.float64, device=t.device)
            nprobs.append(torch.where(idx >= 0, t.exp(), nan).cpu())
            nrank = (nlogp > t.unsqueeze(-1)).sum(-1).double()
            nranks.append(torch.where(idx >= 0, nrank, nan).cpu())
    first = tokenized.tokens[0, 1:].tolist()
    coords = _coords(
        n_prompts=len(prompts),
        n_layers=model.shape.n_layers,
        targets=[str(t) for t in model.tokenizer.convert_ids_to_tokens(first)],
        answer_len=tokenized.answer_tokens.shape[1],
    )
    dims = ("prompt", "layer", "pos")
    values = xr.DataArray(torch.cat(probs).numpy(), dims=dims, coords=coords)
    extras = {
        "rank": xr.DataArray(torch.cat(ranks).numpy(), dims=dims, coords=coords),
        "top_tokens": xr.DataArray(np.concatenate(tops).astype(str), dims=dims, coords=coords),
    }
    if number_ids is not None:
        extras["number_prob"] = xr.DataArray(torch.cat(nprobs).numpy(), dims=dims, coords=coords)
        extras["number_rank"] = xr.DataArray(torch.cat(nranks).numpy(), dims=dims, coords=coords)
    options: dict = {"k": k, "batch_size": batch_size}
    if numbers is not False:
        options["numbers"] = True if numbers is True else [int(n) for n in numbers]
    meta = make_meta(method, model, prompts, options=options, extra=extra_meta)
    return LensResult(values=values, meta=meta, extras=extras)


def number_tokens(model: Model, spec: TaskSpec, matrix: str, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Number tokens ``0..N-1`` in numeric order: ``n``, else the task's operands (W_E), else all."""
    numbers, ids = number_token_ids(model)
    order = np.argsort(numbers)
    numbers, ids = np.asarray(numbers)[order], np.asarray(ids)[order]
    if n is None and matrix == "W_E":
        n = spec.p if spec.operation == "modadd" else (spec.operand_range[1] + 1 if spec.operand_range else None)
    if n is not None:
        if n > len(numbers) or not np.array_equal(numbers[:n], np.arange(n)):
            raise MethodError(f"numbers: {n} needs the single-token numbers 0..{n - 1}; this tokenizer has "
                              f"{len(numbers)} number tokens")
        numbers, ids = numbers[:n], ids[:n]
    return numbers, ids



# -- registration ---------------------------------------------------------------------------------

class LogitLensOptions(Options):
    """Options of :func:`logit_lens`; ``numbers`` restricts it to number tokens."""

    k: int = Field(5, ge=1, le=50)
    numbers: bool = False
    batch_size: int = Field(256, ge=1)


class NumberLensOptions(Options):
    """Options of :func:`number_lens`."""

    batch_size: int = Field(256, ge=1)


def _check_numbers(ctx: RunContext, options) -> None:
    if getattr(options, "numbers", True):
        number_token_ids(ctx.model, ctx.prompts)


def _report_logit_lens(ctx: RunContext) -> dict:
    return {"logit_lens": logit_lens(ctx.model, ctx.prompts, progress=ctx.progress)}


register(MethodSpec(
    name="logit_lens", function=logit_lens, inputs="prompts", result=LensResult, options=LogitLensOptions,
    check=_check_numbers,
    report=ReportView(run=_report_logit_lens, figures={"logit_lens": "Logit lens"}, order=80),
))
register(MethodSpec(name="number_lens", function=number_lens, inputs="prompts", result=NumberLensResult,
                    options=NumberLensOptions, check=_check_numbers))
