"""The methods a report runs, each on the report's model, prompts and pairs.

Every runner returns ``{result name: Result}`` or raises :class:`Skip` with
the reason the method does not apply to this model and task (a 5-digit task
has no operand grid to take Fourier transforms or neuron maps over, a
multi-token answer has no single logit to attribute directly ...). The names
are the contract's ``results/<name>`` directories.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import xarray as xr

from arithinterp.errors import ArithInterpError, MethodError
from arithinterp.methods import (
    attribution_patch,
    classify_neurons,
    direct_logit_attribution,
    discover_circuit,
    edge_attribution_patch,
    fit_probes,
    heuristic_knockout,
    logit_lens,
    mediate,
    neuron_maps,
    patch_activations,
)
from arithinterp.methods._common import make_meta
from arithinterp.methods.fourier import head_key_frequencies, key_frequencies_from_activations
from arithinterp.methods.grid import grid_activations, operand_grid_spec
from arithinterp.methods.probe_sweep import answer_visible
from arithinterp.models import Model, Site
from arithinterp.reports.inputs import ReportInputs
from arithinterp.results import Result
from arithinterp.tasks import PromptSet, TaskSpec, generate, tokenize

__all__ = ["MAX_GRID_SIDE", "PROBE_MIN_PROMPTS", "RUNNERS", "Skip", "grid_spec"]

#: The largest operand domain (values per operand) the grid methods (Fourier, neuron maps) sweep.
MAX_GRID_SIDE = 150
#: Probes are fit on at least this many prompts (a fresh draw of the task) so held-out scores mean something.
PROBE_MIN_PROMPTS = 256
#: Neurons given a mediation IE: the top ones by |AtP| (each costs one patched run per pair).
MEDIATION_NEURONS = 64
N_BOOT = 1000


class Skip(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """A method does not apply to this model/task; ``args[0]`` says why."""


def _patching(inp: ReportInputs, seed: int, progress: bool) -> dict[str, Result]:
    common = dict(per_position=False, answer=inp.answer, n_boot=N_BOOT, seed=seed, progress=progress)
    return {
        "patching_heads": patch_activations(inp.model, inp.pairs, kind="attn_head", **common),
        "patching_neurons": patch_activations(inp.model, inp.pairs, kind="mlp_post", **common),
    }


def _attribution(inp: ReportInputs, seed: int, progress: bool) -> dict[str, Result]:
    common = dict(per_position=False, answer=inp.answer, n_boot=N_BOOT, seed=seed, progress=progress)
    return {
        "attribution_heads": attribution_patch(inp.model, inp.pairs, kind="attn_head", **common),
        "attribution_neurons": attribution_patch(inp.model, inp.pairs, kind="mlp_post", **common),
    }


def mediation_neurons(results: dict[str, Result], model: Model) -> list[int]:
    """Neuron indices given a mediation IE: the top :data:`MEDIATION_NEURONS` by |AtP| in any layer."""
    atp = results.get("attribution_neurons")
    if atp is None:
        return list(range(min(MEDIATION_NEURONS, model.shape.d_mlp)))
    best = np.abs(atp.effect.transpose("layer", "neuron").values).max(0)
    order = np.argsort(-best, kind="stable")[:MEDIATION_NEURONS]
    return sorted(int(i) for i in order)


def _mediation(inp: ReportInputs, seed: int, progress: bool, results: dict[str, Result]) -> dict[str, Result]:
    common = dict(per_position=False, answer=inp.answer, n_boot=N_BOOT, seed=seed, progress=progress)
    return {
        "mediation": mediate(inp.model, inp.pairs, heads=True, **common),
        "mediation_neurons": mediate(inp.model, inp.pairs, neurons=mediation_neurons(results, inp.model),
                                     **common),
    }


def _dla(inp: ReportInputs, seed: int, progress: bool) -> dict[str, Result]:
    if inp.answer != "single":
        # The first answer token only: the logit the prompt's last position writes.
        try:
            return {"dla": direct_logit_attribution(inp.model, _first_token_answers(inp.prompts, inp.model))}
        except ArithInterpError as err:
            raise Skip(f"direct logit attribution needs one answer token: {err}") from err
    return {"dla": direct_logit_attribution(inp.model, inp.prompts)}


def _first_token_answers(prompts: PromptSet, model: Model) -> PromptSet:
    """The prompts with each answer cut to its first token (DLA reads the prompt's last position)."""
    tok = model.tokenizer
    firsts = [tok.decode(tok(a, add_special_tokens=False)["input_ids"][:1]) for a in prompts.answers]
    frame = prompts.frame.copy()
    frame["answer_text"] = firsts
    return PromptSet.from_frame(prompts.spec, frame)


def probe_targets(prompts: PromptSet) -> list[str]:
    """The annotations a report probes: answer digits, and carries / borrows / partial carries."""
    frame = prompts.frame
    patterns = ("answer_digit_", "carry_in_", "borrow_", "c_hat_")
    cols = [c for c in frame.columns if c.startswith(patterns)]
    keep = [c for c in cols if frame[c].nunique() > 1]
    return keep[:12]


def _probes(inp: ReportInputs, seed: int, progress: bool) -> dict[str, Result]:
    spec = inp.prompts.spec
    prompts = inp.prompts
    if len(prompts) < PROBE_MIN_PROMPTS:
        prompts = generate(spec.model_copy(update={"n": PROBE_MIN_PROMPTS, "seed": seed + 1}))
    targets = probe_targets(prompts)
    if not targets:
        raise Skip("the task has no varying annotation to probe (answer digits, carries, borrows, partial carries)")
    # The positions that predict answer tokens (the prompt's last, then the teacher-forced
    # answer's): where the answer is computed, and a fraction of the cost of every position.
    tok = tokenize(prompts, inp.model.tokenizer, answer="multi")
    positions = [tok.prompt_len - 1 + i for i in range(tok.answer_len)]
    result = fit_probes(inp.model, prompts, targets, positions=positions, n_boot=100, seed=seed,
                        progress=progress)
    visible = answer_visible(prompts, inp.model.tokenizer, targets, tok.answer_len)
    coords = {"target": list(targets), "pos": positions}
    mask = xr.DataArray(visible, dims=("target", "pos"), coords=coords)
    return {"probes": dataclasses.replace(result, extras={**result.extras, "answer_visible": mask})}


def grid_spec(spec: TaskSpec) -> TaskSpec:
    """``spec`` with an explicit operand grid, or :class:`Skip` when it has none worth sweeping."""
    try:
        return operand_grid_spec(spec, max_side=MAX_GRID_SIDE)
    except MethodError as err:
        raise Skip(str(err)) from err


def _fourier(inp: ReportInputs, seed: int, progress: bool) -> dict[str, Result]:
    spec = grid_spec(inp.prompts.spec)
    n = inp.model.shape.n_layers
    sites = [Site(k, layer, pos=-1) for layer in range(n) for k in ("attn_head", "mlp_post")]
    try:
        acts = grid_activations(inp.model, spec, sites, heads="write")
    except ArithInterpError as err:
        raise Skip(f"the operand grid cannot be batched: {err}") from err
    side = acts[sites[0]].shape[0]
    out: dict[str, Result] = {}
    for layer in range(n):
        meta = make_meta("key_frequencies", inp.model,
                         options={"p": side, "threshold": 0.85, "layer": layer, "site": "mlp_post, last position"})
        res = key_frequencies_from_activations(acts[Site("mlp_post", layer, pos=-1)], meta=meta)
        out["key_frequencies" if layer == n - 1 else f"key_frequencies_L{layer}"] = res
    writes = {layer: acts[Site("attn_head", layer, pos=-1)] for layer in range(n)}
    out["key_frequencies_heads"] = head_key_frequencies(writes, model=inp.model)
    return out


def _heuristics(inp: ReportInputs, seed: int, progress: bool) -> dict[str, Result]:
    spec = grid_spec(inp.prompts.spec)
    layer = inp.model.shape.n_layers - 1
    try:
        maps = neuron_maps(inp.model, spec, layer=layer)
    except ArithInterpError as err:
        raise Skip(f"neuron maps do not apply: {err}") from err
    heur = classify_neurons(maps)
    out: dict[str, Result] = {"neuron_maps": maps, "heuristics": heur}
    counts = heur.extras["implements"].sum("neuron")
    if int(counts.max()) > 0:
        top = str(counts.coords["class"].values[int(np.argmax(counts.values))])
        out["heuristic_knockout"] = heuristic_knockout(inp.model, spec, heur, top, n=100, seed=seed)
    return out


def _logit_lens(inp: ReportInputs, seed: int, progress: bool) -> dict[str, Result]:
    return {"logit_lens": logit_lens(inp.model, inp.prompts, progress=progress)}


def _circuit(inp: ReportInputs, seed: int, progress: bool, target: float) -> dict[str, Result]:
    circuit = discover_circuit(inp.model, inp.pairs, inp.prompts, target=target, answer=inp.answer,
                               progress=progress)
    edges = edge_attribution_patch(inp.model, inp.pairs, answer=inp.answer, n_boot=200, seed=seed,
                                   progress=progress)
    return {"circuit": circuit, "circuit_edges": edges}


Runner = Callable[..., dict[str, Result]]

RUNNERS: dict[str, Runner] = {
    "patching": _patching,
    "attribution": _attribution,
    "mediation": _mediation,
    "dla": _dla,
    "probes": _probes,
    "fourier": _fourier,
    "heuristics": _heuristics,
    "logit_lens": _logit_lens,
    "circuit": _circuit,
}
