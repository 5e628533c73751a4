"""The attribution report: every applicable method on one model and task, in two ranked tables.

>>> report = build_report("zoo:add-2d-tok")            # the model's own task
>>> report.heads.head()                                  # one row per attention head
>>> report.save("runs/add-2d-tok/report")                # report.html, tables, results/

:func:`build_report` checks its inputs, makes counterfactual pairs, runs the report
view of each registered method that has one (:func:`~arithinterp.reports.inputs.report_methods`,
recording why the others were skipped) in one shared
:class:`~arithinterp.methods.RunContext` (each prompt set tokenized once, sweeps reused),
and assembles the head and neuron tables (:mod:`arithinterp.reports.tables`). The
:class:`~arithinterp.reports.report.AttributionReport` it returns saves to and loads from a
*report directory* (layout in ``docs/report.md``) and renders ``report.html``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from arithinterp.distributed.executor import Executor
from arithinterp.errors import ConfigError
from arithinterp.methods.attribution import compare_with_exact
from arithinterp.methods.attribution_rules import RECOMMENDED_LABEL
from arithinterp.methods.circuit_ablation import CircuitAblation, check_ablation
from arithinterp.methods.circuits import CircuitResult
from arithinterp.methods.evaluate import evaluate
from arithinterp.methods.registry import NotApplicable, RunContext
from arithinterp.methods.registry import methods as get_methods
from arithinterp.models import Site
from arithinterp.progress_bars import tqdm
from arithinterp.reports.inputs import report_methods, resolve_inputs
from arithinterp.reports.report import AttributionReport
from arithinterp.reports.tables import head_table, neuron_table
from arithinterp.results import Result
from arithinterp.results.io import to_jsonable
from arithinterp.results.meta import library_versions
from arithinterp.tasks import PromptPairs, PromptSet, TaskSpec, shared_tokenization

__all__ = ["AttributionReport", "attribution_vs_exact", "build_report", "circuit_granularity"]

#: Components whose top prompts are kept in ``top_prompts.json`` (per table), and prompts per component.
TOP_PROMPT_COMPONENTS = 20
TOP_PROMPTS = 10


def _top_prompts(results: dict[str, Result], prompts: PromptSet, labels: list[str]) -> dict[str, list[dict]]:
    """Per component: the prompts with the largest direct logit attribution."""
    dla = results.get("dla")
    if dla is None:
        return {}
    comps = {str(c): i for i, c in enumerate(dla.values.coords["component"].values)}
    out = {}
    for label in labels:
        if label not in comps:
            continue
        col = np.asarray(dla.values.values[:, comps[label]], dtype=float)
        order = np.argsort(-np.abs(col), kind="stable")[:TOP_PROMPTS]
        out[label] = [{"prompt": prompts.prompts[i] + prompts.answers[i], "value": float(col[i])} for i in order]
    return out


#: How the report names the unit of each circuit member kind.
_UNITS = {"attn_head": "heads", "mlp_out": "whole MLPs", "mlp_post": "neurons", "attn_out": "whole attention layers"}


def circuit_granularity(components: Sequence[str]) -> str:
    """The units a circuit is made of, in words (``"heads + whole MLPs"``): a circuit of whole MLPs
    marks no single neuron, so the neuron table's ``in_circuit`` is empty then."""
    kinds = dict.fromkeys(Site.from_label(c).kind for c in components)
    return " + ".join(_UNITS.get(k, k) for k in kinds) or "empty"


def attribution_vs_exact(results: dict[str, Result]) -> dict[str, Any] | None:
    """How the report's attribution column agrees with exact patching on the report's own pairs,
    per table (:func:`~arithinterp.methods.attribution.compare_with_exact`: Spearman and Pearson
    correlation, top-10 overlap, Spearman over the major cells), and which method it is;
    ``None`` when the report ran only one of the two."""
    out: dict[str, Any] = {}
    for table in ("heads", "neurons"):
        estimate, exact = results.get(f"attribution_{table}"), results.get(f"patching_{table}")
        if estimate is not None and exact is not None:
            c = compare_with_exact(estimate, exact, k=10)
            out[table] = {key: c[key] for key in ("spearman", "pearson", "top_k_overlap", "k", "spearman_major",
                                                   "n_major", "n_cells")}
    return {"method": RECOMMENDED_LABEL, **out} if out else None


def _summary(inp, accuracy, heads: pd.DataFrame, neurons: pd.DataFrame, n_neurons: int,
             results: dict[str, Result], *, seed: int, ran: list[str], skipped: dict[str, str],
             timings: dict[str, float]) -> dict[str, Any]:
    """What ``summary.json`` holds."""
    circuit = results.get("circuit")
    ranked = pd.concat([heads[["component", "patch_effect", "atp"]], neurons[["component", "patch_effect", "atp"]]])
    key = ranked["patch_effect"].abs() if ranked["patch_effect"].notna().any() else ranked["atp"].abs()
    top_components = ranked.assign(_k=key.fillna(-1)).sort_values("_k", ascending=False, kind="stable")
    return {
        "model": inp.model.spec if isinstance(inp.model.spec, str) else inp.model.name,
        "task": inp.prompts.spec.model_dump(mode="json"),
        "n_prompts": len(inp.prompts),
        "n_pairs": len(inp.pairs),
        "pairs": inp.pairs.kind,
        "answer": inp.answer,
        "accuracy": accuracy.accuracy,
        "warnings": accuracy.warnings,
        "accuracy_per_digit": [float(x) for x in accuracy.per_digit.to_numpy()],
        "seed": seed,
        "versions": library_versions(),
        "methods": ran,
        "skipped": skipped,
        "timings_s": timings,
        "circuit": None if circuit is None else {
            "components": list(circuit.circuit),
            "granularity": circuit_granularity(circuit.circuit),
            "faithfulness": circuit.circuit_faithfulness,
            "target": circuit.target,
            "size": len(circuit.circuit),
            "metric": circuit.meta.options.get("metric"),
            "ablation": circuit.meta.options.get("ablation", "mean"),
            "reached": circuit.reached,
            "trivial": circuit.trivial,
            "note": circuit.note,
            "cpr": circuit.cpr,
            "cmd": circuit.cmd,
            "full_score": circuit.full_score,
            "circuit_ablated_score": circuit.circuit_ablated_score,
            "empty_score": circuit.empty_score,
        },
        "attribution_vs_exact": attribution_vs_exact(results),
        "top_components": top_components["component"].head(50).tolist(),
        "n_heads": len(heads),
        "n_neurons": n_neurons,
        "neurons_kept": len(neurons),
        "top_prompts_value": "dla" if "dla" in results else None,
        "results": {name: f"results/{name}" for name in results},
    }


def _run_methods(ctx: RunContext, chosen: Sequence[str], progress: bool):
    """Run each chosen method's report view in ``ctx``: results, ran, skipped (why), timings."""
    registry = get_methods()
    ran: list[str] = []
    skipped: dict[str, str] = {}
    timings: dict[str, float] = {}
    for method in tqdm(chosen, desc="report", disable=not progress):
        start = time.perf_counter()
        try:
            ctx.results.update(registry[method].report.run(ctx))
            ran.append(method)
        except NotApplicable as why:
            skipped[method] = str(why)
        timings[method] = round(time.perf_counter() - start, 3)
    return ctx.results, ran, skipped, timings


def build_report(
    model: Any,
    task: TaskSpec | PromptSet | str | None = None,
    *,
    pairs: str | PromptPairs = "auto",
    n: int | None = None,
    methods: str | Sequence[str] = "all",
    target: float = 0.9,
    ablation: CircuitAblation = "mean",
    seed: int = 0,
    progress: bool = True,
    executor: Executor | None = None,
) -> AttributionReport:
    """Run every applicable attribution method on ``model`` and ``task`` and aggregate them.

    Args:
        model: an arithinterp :class:`~arithinterp.Model`, or a spec :func:`~arithinterp.load_model`
            accepts (``"zoo:add-2d-tok"``, a directory).
        task: a :class:`TaskSpec` (generated with ``n`` prompts and ``seed``), a
            :class:`PromptSet` (used as is, cut to ``n``), or ``None`` / ``"default"``: a zoo
            model's own task.
        pairs: ``"auto"`` (``"random"`` counterfactuals: both operands change, so does the
            answer), a pair kind of :func:`~arithinterp.tasks.make_pairs`, or :class:`PromptPairs`.
        n: prompts (and pairs); default :data:`~arithinterp.reports.inputs.DEFAULT_N` for a spec.
        methods: ``"all"`` or a subset of :func:`~arithinterp.reports.inputs.report_methods`.
        target: the faithfulness the circuit must reach.
        ablation: what replaces a component outside the circuit when its faithfulness is
            measured (:func:`~arithinterp.methods.circuits.discover_circuit`'s ``ablation``).
        seed: seed of the prompts, pairs, bootstrap intervals and probe splits.
        progress: show progress bars.
        executor: an :class:`~arithinterp.distributed.Executor` (e.g. a ``RayExecutor``) over
            which the pair sweeps (patching, attribution, mediation, the circuit's edges) and
            the probes' activation extraction shard; ``None``: everything here. The results
            equal the local run bit for bit.

    Bad input raises an :class:`~arithinterp.errors.ArithInterpError` subclass before
    any forward pass. A method that does not apply is skipped; ``summary["skipped"]``
    says why. When the model is at chance level on the prompts (:func:`~arithinterp.methods.evaluate`),
    a :class:`~arithinterp.errors.ChanceAccuracyWarning` is emitted and its message is kept in
    ``summary["warnings"]`` and shown first on the page.
    """
    if not 0.0 < float(target) <= 1.5:
        raise ConfigError(f"target is a faithfulness (1 = the full model), in (0, 1.5]; got {target}")
    check_ablation(ablation)
    with shared_tokenization():  # every method reads the same token tensors of each prompt set
        inp = resolve_inputs(model, task, pairs=pairs, n=n, methods=methods, seed=seed)
        ctx = inp.context(seed=seed, progress=progress, target=target, ablation=ablation, executor=executor)
        results, ran, skipped, timings = _run_methods(ctx, inp.methods, progress)
        accuracy = evaluate(inp.model, inp.prompts, progress=False)
    for method in report_methods():
        if method not in inp.methods:
            skipped.setdefault(method, "not requested (methods=...)")

    heads = head_table(inp.model, results)
    neurons, n_neurons = neuron_table(inp.model, results)
    circuit = results.get("circuit")
    labels = heads["component"].head(TOP_PROMPT_COMPONENTS).tolist() + \
        neurons["component"].head(TOP_PROMPT_COMPONENTS).tolist()
    summary = _summary(inp, accuracy, heads, neurons, n_neurons, results, seed=seed, ran=ran, skipped=skipped,
                       timings=timings)
    return AttributionReport(
        heads=heads, neurons=neurons, circuit=circuit if isinstance(circuit, CircuitResult) else None,
        results=results, summary=to_jsonable(summary), prompts=inp.prompts.frame.copy(),
        top_prompts=_top_prompts(results, inp.prompts, labels),
    )
