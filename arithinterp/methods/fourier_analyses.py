"""The Fourier analyses of a model as one method: the pipeline's ``fourier`` step and the report's
Fourier columns.

The step runs any of Nanda et al.'s key frequencies and progress measures
(:mod:`arithinterp.methods.fourier`), number-embedding spectra, activation spectra over the
modadd grid, and Zhou et al.'s frequency-filter ablation (:mod:`arithinterp.methods.helix`); the
report takes key frequencies of every MLP layer's neurons and of every head's write over the
task's operand grid.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from arithinterp.errors import ArithInterpError, ConfigError
from arithinterp.methods._common import make_meta
from arithinterp.methods.fourier import (
    KeyFrequencyResult,
    SpectrumResult,
    activation_spectrum,
    embedding_spectrum,
    head_key_frequencies,
    key_frequencies,
    key_frequencies_from_activations,
    modadd_tokens,
)
from arithinterp.methods.grid import grid_activations, report_grid_spec
from arithinterp.methods.helix import fourier_filter_ablation
from arithinterp.methods.lens import number_tokens
from arithinterp.methods.progress import progress_measures, zoo_checkpoints
from arithinterp.methods.registry import (
    MethodSpec,
    NotApplicable,
    Options,
    ReportColumn,
    ReportView,
    RunContext,
    check_layer,
    register,
    site_values,
)
from arithinterp.models import Site
from arithinterp.models.site import SiteKind

FourierAnalysis = Literal["key_frequencies", "progress", "embedding", "unembedding", "activation", "filter"]
_MODULAR_ANALYSES = ("key_frequencies", "progress", "activation")


class FourierOptions(Options):
    """Fourier analyses, one result per analysis:

    - ``key_frequencies``: Nanda et al.'s per-neuron key frequencies (a ``modadd`` task);
    - ``progress``: restricted/excluded loss and key-frequency count over the model's
      checkpoints (``checkpoints: zoo`` or ``{step: directory}``; a ``modadd`` task);
    - ``embedding`` / ``unembedding``: spectrum of ``W_E`` rows / ``W_U`` columns over
      the number tokens (a number-level tokenizer);
    - ``activation``: 2D spectrum of ``site`` over the ``modadd`` operand grid;
    - ``filter``: Zhou et al.'s frequency-filter ablation, accuracy on the task's prompts when
      one module's output (``attn_out`` / ``mlp_out`` of each layer) loses a band (``bands``:
      periods above / at most ``cutoff_period``) in the number-unembedding subspace (a
      number-level tokenizer; single-token answers).
    """

    analyses: list[FourierAnalysis] = Field(min_length=1)
    threshold: float = Field(0.85, gt=0, le=1)
    layer: int | None = Field(None, ge=0)
    checkpoints: Literal["zoo"] | dict[int, str] = "zoo"
    train_fraction: float = Field(0.3, gt=0, lt=1)
    numbers: int | None = Field(None, ge=2)  # how many numbers 0..N-1 (default: the task's operands / all)
    site: SiteKind = "mlp_post"
    bands: list[Literal["low", "high", "none"]] = Field(default_factory=lambda: ["low", "high"], min_length=1)
    cutoff_period: float = Field(10.0, gt=2)

    @field_validator("analyses")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"analyses repeat: {v}")
        return v


def _fourier_task_check(options: FourierOptions, spec) -> None:
    modular = [a for a in options.analyses if a in _MODULAR_ANALYSES]
    if modular and spec.operation != "modadd":
        raise ValueError(f"analyses: {modular} need a modadd task (operation: modadd); "
                         "for other tasks use embedding / unembedding")


def _checkpoints(ctx: RunContext, options: FourierOptions) -> dict[int, Any]:
    if options.checkpoints != "zoo":
        return dict(options.checkpoints)
    if not (ctx.model_spec or "").startswith("zoo:"):
        raise ConfigError("checkpoints: 'zoo' needs a zoo model; give {step: directory} for others")
    found = zoo_checkpoints(ctx.model_spec[len("zoo:"):])
    if not found:
        raise ConfigError(f"checkpoints: {ctx.model_spec} ships no checkpoints")
    return found


def _filter_data(ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt tokens and the single answer token of each prompt (an error otherwise)."""
    tk = ctx.tokens("single")
    return tk.prompt_tokens, tk.answer_tokens[:, 0]


def _check_fourier(ctx: RunContext, options: FourierOptions) -> None:
    check_layer(ctx.model, options.layer)
    for analysis in options.analyses:
        if analysis in ("embedding", "unembedding"):
            number_tokens(ctx.model, ctx.spec, "W_E" if analysis == "embedding" else "W_U", options.numbers)
        if analysis == "progress":
            _checkpoints(ctx, options)
        if analysis == "activation":
            Site(options.site, ctx.model.shape.n_layers - 1 if options.layer is None else options.layer, pos=-1)
        if analysis == "filter":
            number_tokens(ctx.model, ctx.spec, "W_U", options.numbers)
            _filter_data(ctx)


def _run_fourier(ctx: RunContext, options: FourierOptions) -> dict:
    p = ctx.spec.p
    out: dict[str, Any] = {}
    for analysis in options.analyses:
        if analysis == "key_frequencies":
            out[analysis] = key_frequencies(ctx.model, p=p, threshold=options.threshold, layer=options.layer)
        elif analysis == "progress":
            out[analysis] = progress_measures(_checkpoints(ctx, options), p=p, train_fraction=options.train_fraction,
                                              seed=ctx.seed, threshold=options.threshold)
        elif analysis in ("embedding", "unembedding"):
            matrix = "W_E" if analysis == "embedding" else "W_U"
            _, ids = number_tokens(ctx.model, ctx.spec, matrix, options.numbers)
            out[analysis] = embedding_spectrum(ctx.model, ids.tolist(), matrix=matrix)
        elif analysis == "filter":
            _, ids = number_tokens(ctx.model, ctx.spec, "W_U", options.numbers)
            tokens, answers = _filter_data(ctx)
            out[analysis] = fourier_filter_ablation(ctx.model, tokens, answers, numbers=ids.tolist(),
                                                    bands=tuple(options.bands), cutoff_period=options.cutoff_period,
                                                    layers=None if options.layer is None else [options.layer])
        else:
            layer = ctx.model.shape.n_layers - 1 if options.layer is None else options.layer
            out[analysis] = activation_spectrum(ctx.model, Site(options.site, layer, pos=-1), modadd_tokens(p))
    return out


def _report_fourier(ctx: RunContext) -> dict:
    spec = report_grid_spec(ctx.spec)
    n = ctx.model.shape.n_layers
    sites = [Site(k, layer, pos=-1) for layer in range(n) for k in ("attn_head", "mlp_post")]
    try:  # one sweep of the grid, kept for the heuristics' neuron maps
        acts = ctx.memo(("grid_activations", spec.model_dump_json()),
                        lambda: grid_activations(ctx.model, spec, sites, heads="write"))
    except ArithInterpError as err:
        raise NotApplicable(f"the operand grid cannot be batched: {err}") from err
    side = acts[sites[0]].shape[0]
    out: dict[str, Any] = {}
    for layer in range(n):
        meta = make_meta("key_frequencies", ctx.model,
                         options={"p": side, "threshold": 0.85, "layer": layer, "site": "mlp_post, last position"})
        res = key_frequencies_from_activations(acts[Site("mlp_post", layer, pos=-1)], meta=meta)
        out["key_frequencies" if layer == n - 1 else f"key_frequencies_L{layer}"] = res
    writes = {layer: acts[Site("attn_head", layer, pos=-1)] for layer in range(n)}
    out["key_frequencies_heads"] = head_key_frequencies(writes, model=ctx.model)
    return out


def _read_head_fourier(extra: str | None):
    def read(result: KeyFrequencyResult, sites: list[Site]) -> np.ndarray:
        return site_values(result.values if extra is None else result.extras[extra], sites)
    return read


def _read_neuron_fourier(extra: str | None):
    def read(result: KeyFrequencyResult, sites: list[Site]) -> np.ndarray:
        layer = result.meta.options.get("layer")
        data = result.values if extra is None else result.extras[extra]
        index = {int(n): i for i, n in enumerate(data.coords["neuron"].values)}
        values = np.asarray(data.values, dtype=float)
        rows = [(i, index[s.neuron]) for i, s in enumerate(sites) if s.layer == layer and s.neuron in index]
        out = np.full(len(sites), np.nan)
        if rows:
            at, of = np.array(rows).T
            out[at] = values[of]
        return out
    return read


class _NeuronFourierColumn(ReportColumn):
    """A neuron column read from the per-layer key-frequency results (one per MLP layer)."""

    def values(self, results, sites):
        found = [r for name, r in results.items()
                 if name == "key_frequencies" or name.startswith("key_frequencies_L")]
        if not found:
            return None
        out = np.full(len(sites), np.nan)
        for result in found:
            part = self.read(result, sites)
            out = np.where(np.isnan(out), part, out)
        return out


register(MethodSpec(
    name="fourier", function=key_frequencies, inputs="prompts", result=(KeyFrequencyResult, SpectrumResult),
    options=FourierOptions, step_only=frozenset(FourierOptions.model_fields), run=_run_fourier,
    check=_check_fourier, task_check=_fourier_task_check,
    report=ReportView(
        run=_report_fourier,
        columns=(ReportColumn("fourier_key_freq", "heads", "key_frequencies_heads", _read_head_fourier("key_freq")),
                 _NeuronFourierColumn("fourier_key_freq", "neurons", "key_frequencies",
                                      _read_neuron_fourier("key_freq")),
                 ReportColumn("fourier_explained", "heads", "key_frequencies_heads", _read_head_fourier(None)),
                 _NeuronFourierColumn("fourier_explained", "neurons", "key_frequencies",
                                      _read_neuron_fourier(None))),
        figures={"key_frequencies": "Fourier key frequencies: neurons",
                 "key_frequencies_heads": "Fourier key frequencies: heads"},
        order=60,
    ),
))
