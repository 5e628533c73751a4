"""Exact-match evaluation of arithmetic prompts.

The answer is scored by teacher forcing: the model reads the prompt followed
by the true answer tokens, and answer token ``i`` counts as correct when the
argmax of the logits at the position before it equals it. A prompt is exactly
right when every answer token is. This equals greedy decoding: the first
wrong argmax is where greedy decoding would have left the answer.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
import xarray as xr
from plotly.subplots import make_subplots
from pydantic import Field

from arithinterp.errors import ChanceAccuracyWarning
from arithinterp.methods._common import make_meta, token_batches
from arithinterp.methods.chance import chance_message
from arithinterp.methods.registry import MethodSpec, Options, register
from arithinterp.models import Model
from arithinterp.progress_bars import tqdm
from arithinterp.results import Result
from arithinterp.tasks import PromptSet, generate, tokenize


class EvalResult(Result):
    """Per-prompt, per-answer-token correctness.

    ``values``: dims ``(prompt, digit)``, 1.0 where the answer token at that
    position (in written order) was the argmax. Non-index coordinate
    ``complexity`` on ``prompt`` when the task defines it. Extras:
    ``logprob`` (log-probability of each answer token).
    """

    metric_name = "correct"

    @property
    def exact(self) -> xr.DataArray:
        """1.0 for each prompt whose whole answer is right."""
        return self.values.min("digit")

    @property
    def accuracy(self) -> float:
        """Exact-match accuracy over all prompts."""
        return float(self.exact.mean())

    @property
    def per_digit(self) -> pd.Series:
        """Accuracy of each answer token position (written order)."""
        return self.values.mean("prompt").to_series().rename("accuracy")

    @property
    def per_class(self) -> pd.Series:
        """Exact-match accuracy per complexity class (empty if the task has none)."""
        if "complexity" not in self.values.coords:
            return pd.Series(dtype=float, name="accuracy")
        exact = self.exact.to_series()
        classes = self.values.coords["complexity"].to_series()
        return exact.groupby(classes.values).mean().rename("accuracy").sort_index()

    @property
    def warnings(self) -> list[str]:
        """The :class:`~arithinterp.errors.ChanceAccuracyWarning` messages of this evaluation
        (empty unless the accuracy was at chance level)."""
        return list(self.meta.extra.get("warnings", []))

    def summary(self) -> dict:
        return {
            **({"warnings": self.warnings} if self.warnings else {}),
            "accuracy": self.accuracy,
            "n_prompts": int(self.values.sizes["prompt"]),
            "per_digit": {int(k): float(v) for k, v in self.per_digit.items()},
            "per_class": {str(k): float(v) for k, v in self.per_class.items()},
        }

    def plot(self) -> go.Figure:
        per_class = self.per_class
        cols = 2 if len(per_class) else 1
        titles = ["accuracy per answer digit"] + (["exact match per complexity class"] if cols == 2 else [])
        fig = make_subplots(rows=1, cols=cols, subplot_titles=titles)
        digits = self.per_digit
        fig.add_trace(go.Bar(x=[str(d) for d in digits.index], y=digits.values, name="per digit"), 1, 1)
        if cols == 2:
            fig.add_trace(go.Bar(x=list(per_class.index), y=per_class.values, name="per class"), 1, 2)
            fig.update_xaxes(title_text="complexity class", row=1, col=2)
        fig.update_xaxes(title_text="answer digit (written order)", row=1, col=1)
        fig.update_yaxes(range=[0, 1.02], title_text="accuracy")
        fig.update_layout(
            title=f"{self.meta.model}: exact match {self.accuracy:.4f} on {self.values.sizes['prompt']} prompts",
            showlegend=False,
        )
        return fig

    @classmethod
    def example(cls) -> EvalResult:
        rng = np.random.default_rng(0)
        correct = (rng.random((12, 3)) < 0.8).astype(float)
        values = xr.DataArray(
            correct,
            dims=("prompt", "digit"),
            coords={"prompt": np.arange(12), "digit": np.arange(3),
                    "complexity": ("prompt", np.array(["S0", "S1", "S2"] * 4))},
        )
        logprob = xr.DataArray(np.log(rng.random((12, 3))), dims=values.dims, coords=values.coords)
        return cls(values=values, meta=make_meta("evaluate", None), extras={"logprob": logprob})


def evaluate(model: Model, prompts: PromptSet | None = None, *, batch_size: int = 256,
             progress: bool = True) -> EvalResult:
    """Exact-match accuracy of ``model`` on ``prompts``, per answer digit and per complexity class.

    A score at chance level (:mod:`arithinterp.methods.chance`) emits a
    :class:`~arithinterp.errors.ChanceAccuracyWarning` naming the likely cause (a format,
    operation or digit count other than the model's own task, prompts longer than it was
    trained on) and keeps it in :attr:`EvalResult.warnings`.

    Args:
        model: the model to score.
        prompts: a generated task (:func:`arithinterp.tasks.generate`); ``None``: the model's
            own task (``generate(model=model)``, zoo models only).
        batch_size: prompts per forward pass.
        progress: show a progress bar.
    """
    if prompts is None:
        prompts = generate(model=model)
    tokenized = tokenize(prompts, model.tokenizer, answer="multi")
    positions = tokenized.answer_positions
    correct, logprob = [], []
    for batch, answers in tqdm(
        token_batches(tokenized, batch_size), desc="evaluate", disable=not progress, leave=False
    ):
        logits = model.logits(batch)[:, positions]
        logp = torch.log_softmax(logits.double(), dim=-1)
        correct.append((logits.argmax(-1) == answers).cpu())
        logprob.append(logp.gather(-1, answers.unsqueeze(-1)).squeeze(-1).cpu())
    correct_np = torch.cat(correct).numpy().astype(float)
    coords = {"prompt": np.arange(len(prompts)), "digit": np.arange(correct_np.shape[1])}
    if "complexity" in prompts.frame.columns:
        coords["complexity"] = ("prompt", prompts.frame["complexity"].astype(str).to_numpy())
    values = xr.DataArray(correct_np, dims=("prompt", "digit"), coords=coords)
    extras = {"logprob": xr.DataArray(torch.cat(logprob).numpy(), dims=values.dims, coords=values.coords)}
    accuracy, token_accuracy = float(correct_np.min(axis=1).mean()), float(correct_np.mean())
    warning = chance_message(model, prompts, accuracy=accuracy, token_accuracy=token_accuracy,
                             seq_len=int(tokenized.tokens.shape[1]))
    meta = make_meta("evaluate", model, prompts, options={"batch_size": batch_size},
                     extra={"warnings": [warning]} if warning else None)
    if warning:
        warnings.warn(warning, ChanceAccuracyWarning, stacklevel=2)
    return EvalResult(values=values, meta=meta, extras=extras)


# -- registration ---------------------------------------------------------------------------------

class EvaluateOptions(Options):
    """Options of :func:`evaluate`."""

    batch_size: int = Field(256, ge=1)


register(MethodSpec(name="evaluate", function=evaluate, inputs="prompts", result=EvalResult,
                    options=EvaluateOptions))
