"""What each pipeline step computes: a check run before any step starts, and the step itself.

A step returns one object with ``save(directory)`` (a
:class:`~arithinterp.results.Result`, or the report step's
:class:`~arithinterp.reports.AttributionReport`), saved in its step directory,
or a mapping ``part -> Result | TunedLens`` (each saved in ``<step>/<part>/``). Every option comes from the validated step config
(:mod:`arithinterp.pipeline.config`); nothing here reads files or the
environment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from arithinterp.errors import ArithInterpError, ConfigError, SiteError
from arithinterp.methods.metrics import tokenize_pairs
from arithinterp.models import Model, Site
from arithinterp.results import ScalarTable
from arithinterp.tasks import PromptPairs, PromptSet, TaskSpec, tokenize

StepOutput = Any  # a Result, an AttributionReport, or {part: Result | TunedLens}


@dataclass
class StepContext:
    """What a step runs on: the model, its task's prompts and (paired steps) pairs."""

    model: Model
    model_spec: str
    spec: TaskSpec
    prompts: PromptSet
    pairs: PromptPairs | None
    seed: int
    progress: bool


def _check_layer(model: Model, layer: int | None, what: str = "layer") -> None:
    n = model.shape.n_layers
    if layer is not None and not 0 <= layer < n:
        raise SiteError(f"{what}: {layer} is not a layer of this model; valid: 0..{n - 1}")


# -- evaluation and lenses -------------------------------------------------------------------


def run_evaluate(step, ctx: StepContext) -> StepOutput:
    from arithinterp.methods import evaluate

    return evaluate(ctx.model, ctx.prompts, batch_size=step.batch_size, progress=ctx.progress)


def check_logit_lens(step, ctx: StepContext) -> None:
    if step.numbers:
        from arithinterp.methods import number_token_ids

        number_token_ids(ctx.model, ctx.prompts)


def run_logit_lens(step, ctx: StepContext) -> StepOutput:
    from arithinterp.methods import logit_lens

    return logit_lens(ctx.model, ctx.prompts, k=step.k, numbers=step.numbers, batch_size=step.batch_size,
                      progress=ctx.progress)


def check_number_lens(step, ctx: StepContext) -> None:
    from arithinterp.methods import number_token_ids

    number_token_ids(ctx.model, ctx.prompts)


def run_number_lens(step, ctx: StepContext) -> StepOutput:
    from arithinterp.methods import number_lens

    return number_lens(ctx.model, ctx.prompts, batch_size=step.batch_size, progress=ctx.progress)


def _lens_split(step, ctx: StepContext) -> tuple[PromptSet, PromptSet]:
    n_train = round(step.train_fraction * len(ctx.prompts))
    if not 1 <= n_train < len(ctx.prompts):
        raise ConfigError(f"train_fraction: {step.train_fraction} of {len(ctx.prompts)} prompts leaves "
                          "no training or no held-out prompts; raise the task's n")
    return ctx.prompts[:n_train], ctx.prompts[n_train:]


def check_tuned_lens(step, ctx: StepContext) -> None:
    _lens_split(step, ctx)


def run_tuned_lens(step, ctx: StepContext) -> StepOutput:
    from arithinterp.methods import lens_kl, train_tuned_lens, tuned_lens

    train, held_out = _lens_split(step, ctx)
    lens = train_tuned_lens(ctx.model, train, steps=step.train_steps, lr=step.lr,
                            batch_positions=step.batch_positions, seed=ctx.seed, batch_size=step.batch_size,
                            progress=ctx.progress)
    return {
        "lens": lens,
        "tuned_lens": tuned_lens(ctx.model, held_out, lens, k=step.k, batch_size=step.batch_size,
                                 progress=ctx.progress),
        "kl": lens_kl(ctx.model, held_out, lens, batch_size=step.batch_size),
    }


# -- causal steps ----------------------------------------------------------------------------


def _sweep_options(step) -> dict[str, Any]:
    options = step.model_dump(exclude={"kind", "name", "task", "pairs"})
    options["kind"] = options.pop("sites")
    return options


def check_paired(step, ctx: StepContext) -> None:
    tokenize_pairs(ctx.pairs, ctx.model.tokenizer, answer=getattr(step, "answer", "single"))


def run_patching(step, ctx: StepContext) -> StepOutput:
    from arithinterp.methods import patch_activations

    return patch_activations(ctx.model, ctx.pairs, seed=ctx.seed, progress=ctx.progress, **_sweep_options(step))


def run_attribution(step, ctx: StepContext) -> StepOutput:
    from arithinterp.methods import attribution_patch

    return attribution_patch(ctx.model, ctx.pairs, seed=ctx.seed, progress=ctx.progress, **_sweep_options(step))


def run_mediation(step, ctx: StepContext) -> StepOutput:
    from arithinterp.methods import mediate

    options = step.model_dump(exclude={"kind", "name", "task", "pairs"})
    return mediate(ctx.model, ctx.pairs, seed=ctx.seed, progress=ctx.progress, **options)


def run_circuit(step, ctx: StepContext) -> StepOutput:
    from arithinterp.methods import discover_circuit

    options = step.model_dump(exclude={"kind", "name", "task", "pairs"})
    return discover_circuit(ctx.model, ctx.pairs, progress=ctx.progress, **options)


# -- representations -------------------------------------------------------------------------


def _probe_sites(step, model: Model) -> str | list[Site]:
    if step.sites == "resid":
        return "resid"
    for ref in step.sites:
        _check_layer(model, ref.layer, "sites")
    return [Site(ref.kind, ref.layer) for ref in step.sites]


def check_probes(step, ctx: StepContext) -> None:
    _probe_sites(step, ctx.model)
    length = tokenize(ctx.prompts, ctx.model.tokenizer).tokens.shape[1]
    bad = [p for p in step.positions or [] if not -length <= p < length]
    if bad:
        raise SiteError(f"positions: {bad} outside the prompts' {length} positions")
    if isinstance(step.control_by, list):
        missing = [c for c in step.control_by if c not in ctx.prompts.frame.columns]
        if missing:
            raise ConfigError(f"control_by: {missing} are not annotations of this task; "
                              f"valid: {sorted(ctx.prompts.frame.columns)}")


def run_probes(step, ctx: StepContext) -> StepOutput:
    from arithinterp.methods import fit_probes

    return fit_probes(
        ctx.model, ctx.prompts, step.targets, sites=_probe_sites(step, ctx.model), positions=step.positions,
        kind=step.probe, periods=step.periods, test_fraction=step.test_fraction, split=step.split,
        control=step.control, control_by=step.control_by, n_boot=step.n_boot, l2=step.l2, seed=ctx.seed,
        batch_size=step.batch_size, progress=ctx.progress,
    )


def _numbers(step, ctx: StepContext, matrix: str) -> tuple[np.ndarray, np.ndarray]:
    """Number tokens ``0..N-1`` in numeric order: ``step.numbers``, else the operands (W_E), else all."""
    from arithinterp.methods import number_token_ids

    numbers, ids = number_token_ids(ctx.model)
    order = np.argsort(numbers)
    numbers, ids = np.asarray(numbers)[order], np.asarray(ids)[order]
    n = step.numbers
    if n is None and matrix == "W_E":
        n = ctx.spec.p if ctx.spec.operation == "modadd" else (
            ctx.spec.operand_range[1] + 1 if ctx.spec.operand_range else None)
    if n is not None:
        if n > len(numbers) or not np.array_equal(numbers[:n], np.arange(n)):
            raise ConfigError(f"numbers: {n} needs the single-token numbers 0..{n - 1}; this tokenizer has "
                              f"{len(numbers)} number tokens")
        numbers, ids = numbers[:n], ids[:n]
    return numbers, ids


def _checkpoints(step, ctx: StepContext) -> dict[int, Any]:
    if step.checkpoints != "zoo":
        return dict(step.checkpoints)
    if not ctx.model_spec.startswith("zoo:"):
        raise ConfigError("checkpoints: 'zoo' needs a zoo model; give {step: directory} for others")
    from arithinterp.methods.progress import zoo_checkpoints

    found = zoo_checkpoints(ctx.model_spec[len("zoo:"):])
    if not found:
        raise ConfigError(f"checkpoints: {ctx.model_spec} ships no checkpoints")
    return found


def check_fourier(step, ctx: StepContext) -> None:
    _check_layer(ctx.model, step.layer)
    for analysis in step.analyses:
        if analysis in ("embedding", "unembedding"):
            _numbers(step, ctx, "W_E" if analysis == "embedding" else "W_U")
        if analysis == "progress":
            _checkpoints(step, ctx)
        if analysis == "activation":
            Site(step.site, ctx.model.shape.n_layers - 1 if step.layer is None else step.layer, pos=-1)
        if analysis == "filter":
            _numbers(step, ctx, "W_U")
            _filter_data(ctx)


def _filter_data(ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt tokens and the single answer token of each prompt (a ConfigError otherwise)."""
    tk = tokenize(ctx.prompts, ctx.model.tokenizer, answer="single")
    return tk.prompt_tokens, tk.answer_tokens[:, 0]


def run_fourier(step, ctx: StepContext) -> StepOutput:
    from arithinterp.methods import (
        activation_spectrum,
        embedding_spectrum,
        key_frequencies,
        progress_measures,
    )
    from arithinterp.methods.fourier import modadd_tokens

    p = ctx.spec.p
    out: dict[str, Any] = {}
    for analysis in step.analyses:
        if analysis == "key_frequencies":
            out[analysis] = key_frequencies(ctx.model, p=p, threshold=step.threshold, layer=step.layer)
        elif analysis == "progress":
            out[analysis] = progress_measures(_checkpoints(step, ctx), p=p, train_fraction=step.train_fraction,
                                              seed=ctx.seed, threshold=step.threshold)
        elif analysis in ("embedding", "unembedding"):
            matrix = "W_E" if analysis == "embedding" else "W_U"
            _, ids = _numbers(step, ctx, matrix)
            out[analysis] = embedding_spectrum(ctx.model, ids.tolist(), matrix=matrix)
        elif analysis == "filter":
            from arithinterp.methods import fourier_filter_ablation

            _, ids = _numbers(step, ctx, "W_U")
            tokens, answers = _filter_data(ctx)
            out[analysis] = fourier_filter_ablation(ctx.model, tokens, answers, numbers=ids.tolist(),
                                                    bands=tuple(step.bands), cutoff_period=step.cutoff_period,
                                                    layers=None if step.layer is None else [step.layer])
        else:
            layer = ctx.model.shape.n_layers - 1 if step.layer is None else step.layer
            out[analysis] = activation_spectrum(ctx.model, Site(step.site, layer, pos=-1), modadd_tokens(p))
    return out


def _helix_data(step, ctx: StepContext):
    batch = tokenize_pairs(ctx.pairs, ctx.model.tokenizer, answer="single")
    column = "operand_a" if ctx.pairs.operand != "b" else "operand_b"
    fit_tokens = tokenize(ctx.prompts, ctx.model.tokenizer, answer="single").prompt_tokens
    fit_values = ctx.prompts.frame[column].to_numpy()
    clean_values = ctx.pairs.clean.frame[column].to_numpy()
    return batch, fit_tokens, fit_values, clean_values


def check_helix(step, ctx: StepContext) -> None:
    _check_layer(ctx.model, step.layer)
    Site(step.site, step.layer, pos=step.pos)
    _helix_data(step, ctx)
    if step.own_periods:
        _numbers(step.model_copy(update={"numbers": None}), ctx, "W_E")


def run_helix(step, ctx: StepContext) -> StepOutput:
    from arithinterp.methods import embedding_spectrum, fit_helix, patch_with_fit

    batch, fit_tokens, fit_values, clean_values = _helix_data(step, ctx)
    site = Site(step.site, step.layer, pos=step.pos)
    periods = tuple(step.periods)
    fits = {kind: fit_helix(ctx.model, site, fit_values, tokens=fit_tokens, periods=periods, kind=kind,
                            n_pca=step.n_pca) for kind in step.kinds}
    if step.own_periods:
        _, ids = _numbers(step.model_copy(update={"numbers": None}), ctx, "W_E")
        own = tuple(round(t, 4) for t, _ in embedding_spectrum(ctx.model, ids.tolist()).top_periods(step.own_periods))
        fits["helix_own_periods"] = fit_helix(ctx.model, site, fit_values, tokens=fit_tokens, periods=own,
                                              n_pca=step.n_pca)
    if step.shuffled:
        rng = np.random.default_rng(ctx.seed)
        fits["helix_shuffled"] = fit_helix(ctx.model, site, rng.permutation(fit_values), tokens=fit_tokens,
                                           periods=periods, n_pca=step.n_pca)
    return patch_with_fit(ctx.model, site, fits, clean_tokens=batch.clean, corrupt_tokens=batch.corrupt,
                          clean_values=clean_values, answer_ids=batch.clean_answer[:, 0])


# -- neurons ---------------------------------------------------------------------------------


def _heuristics_layer(step, model: Model) -> int:
    return model.shape.n_layers - 1 if step.layer is None else step.layer


def check_heuristics(step, ctx: StepContext) -> None:
    from arithinterp.methods.grid import operand_grid

    _check_layer(ctx.model, step.layer)
    bad = [n for n in step.neurons or [] if not 0 <= n < ctx.model.shape.d_mlp]
    if bad:
        raise SiteError(f"neurons: {bad} outside 0..{ctx.model.shape.d_mlp - 1}")
    *_, answers = operand_grid(ctx.spec)
    tok = ctx.model.tokenizer
    multi = sorted({t for t in set(answers) if len(tok(t, add_special_tokens=False)["input_ids"]) != 1})
    if multi:
        raise ArithInterpError(f"heuristics need every result to be one token; {len(multi)} are not "
                               f"(e.g. {multi[:3]}); use a number-level tokenizer (zoo:add-2d-tok)")


def run_heuristics(step, ctx: StepContext) -> StepOutput:
    from arithinterp.methods import classify_neurons, heuristic_knockout, neuron_maps

    layer = _heuristics_layer(step, ctx.model)
    maps = neuron_maps(ctx.model, ctx.spec, layer=layer, neurons=step.neurons, batch_size=step.batch_size)
    classes = classify_neurons(maps, threshold=step.threshold, moduli=step.moduli)
    implements = classes.extras["implements"]
    counts = implements.sum("neuron").to_series().sort_values(ascending=False, kind="stable")
    top = [str(h) for h, c in counts.items() if c > 0][: step.knockout]
    out: dict[str, Any] = {"classification": classes}
    # Keep the maps of the classified neurons only: every neuron's would be d_mlp x |grid| x 2 floats.
    best = classes.values.max("class").to_series()
    classified = best[implements.any("class").to_series()].sort_values(ascending=False, kind="stable")
    if len(classified):
        out["maps"] = maps.select([int(n) for n in classified.index[:64]])
    tables = [heuristic_knockout(ctx.model, ctx.spec, classes, h, n=step.knockout_n, seed=ctx.seed,
                                 batch_size=step.batch_size) for h in top]
    if tables:
        data = np.stack([t.values.values for t in tables])
        meta = tables[0].meta.replace(options={**tables[0].meta.options, "heuristic": top})
        out["knockout"] = ScalarTable.from_array(
            data, dims=("class", "target", "stat"), meta=meta, metric="knockout",
            coords={"class": top, "target": tables[0].values.coords["target"].values,
                    "stat": tables[0].values.coords["stat"].values})
    return out


# -- the report ------------------------------------------------------------------------------


def run_report(step, ctx: StepContext) -> StepOutput:
    from arithinterp.reports import build_report

    methods = step.methods if step.methods == "all" else list(step.methods)
    return build_report(ctx.model, ctx.spec, pairs=step.pairs, n=step.n or ctx.spec.n, methods=methods,
                        target=step.target, seed=ctx.seed, progress=ctx.progress)


@dataclass(frozen=True)
class StepKind:
    run: Callable[[Any, StepContext], StepOutput]
    check: Callable[[Any, StepContext], None] | None = None


STEPS: dict[str, StepKind] = {
    "evaluate": StepKind(run_evaluate),
    "logit_lens": StepKind(run_logit_lens, check_logit_lens),
    "number_lens": StepKind(run_number_lens, check_number_lens),
    "tuned_lens": StepKind(run_tuned_lens, check_tuned_lens),
    "patching": StepKind(run_patching, check_paired),
    "attribution": StepKind(run_attribution, check_paired),
    "mediation": StepKind(run_mediation, check_paired),
    "circuit": StepKind(run_circuit, check_paired),
    "probes": StepKind(run_probes, check_probes),
    "fourier": StepKind(run_fourier, check_fourier),
    "helix": StepKind(run_helix, check_helix),
    "heuristics": StepKind(run_heuristics, check_heuristics),
    "report": StepKind(run_report),
}


def seed_everything(seed: int) -> None:
    """Seed torch and numpy's global generators, so a step run alone equals a step run after others."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
