"""The attribution report: every applicable method on one model and task, in two ranked tables.

>>> report = build_report("zoo:add-2d-tok")            # the model's own task
>>> report.heads.head()                                  # one row per attention head
>>> report.save("runs/add-2d-tok/report")                # report.html, tables, results/

:func:`build_report` checks its inputs, makes counterfactual pairs, runs each
method family of :data:`~arithinterp.reports.inputs.METHODS` that applies
(recording why the others were skipped), assembles the head and neuron
tables (:mod:`arithinterp.reports.tables`), and finds the circuit. The
:class:`AttributionReport` it returns saves to and loads from a *report
directory* (layout in ``docs/report.md``) and renders ``report.html``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from arithinterp.errors import ResultError
from arithinterp.methods.circuits import CircuitResult
from arithinterp.methods.evaluate import evaluate
from arithinterp.reports.export import write_parquet
from arithinterp.reports.inputs import METHODS, resolve_inputs
from arithinterp.reports.runners import RUNNERS, Skip
from arithinterp.reports.tables import head_table, neuron_table
from arithinterp.results import Result
from arithinterp.results.io import atomic_dir, to_jsonable
from arithinterp.results.meta import library_versions
from arithinterp.tasks import PromptPairs, PromptSet, TaskSpec

__all__ = ["AttributionReport", "build_report"]

#: Components whose top prompts are kept in ``top_prompts.json`` (per table), and prompts per component.
TOP_PROMPT_COMPONENTS = 20
TOP_PROMPTS = 10
_FILES = ("summary.json", "heads.parquet", "neurons.parquet", "prompts.parquet")


@dataclass(frozen=True, eq=False)
class AttributionReport:
    """Head and neuron attribution tables, the circuit, every method's result and a summary.

    ``heads`` / ``neurons``: one row per component sorted by rank (columns in
    ``docs/report.md``); ``circuit``: the :class:`CircuitResult` or ``None``;
    ``results``: ``{name: Result}``; ``summary``: what ``summary.json`` holds;
    ``prompts``: the prompt frame the report used; ``top_prompts``:
    ``{component: [{"prompt", "value"}]}``.
    """

    heads: pd.DataFrame
    neurons: pd.DataFrame
    circuit: CircuitResult | None
    results: dict[str, Result]
    summary: dict[str, Any]
    prompts: pd.DataFrame = field(default_factory=pd.DataFrame)
    top_prompts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __repr__(self) -> str:
        c = self.summary.get("circuit") or {}
        return (f"AttributionReport(model={self.summary.get('model')!r}, heads={len(self.heads)}, "
                f"neurons={len(self.neurons)}, methods={self.summary.get('methods')}, "
                f"circuit={c.get('components')}, skipped={sorted(self.summary.get('skipped', {}))})")

    # -- disk ------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the report directory atomically (a temp directory, then one rename)."""
        from arithinterp.reports.page import render_report

        page = render_report(self)  # rendered first: a failing figure leaves nothing half-written
        with atomic_dir(directory) as tmp:
            (tmp / "report.html").write_text(page, encoding="utf-8")
            (tmp / "summary.json").write_text(_json(self.summary))
            for name, frame in (("heads", self.heads), ("neurons", self.neurons)):
                write_parquet(tmp / f"{name}.parquet", frame)
                (tmp / f"{name}.json").write_text(_json(frame.to_dict(orient="records")))
            (tmp / "top_prompts.json").write_text(_json(self.top_prompts))
            write_parquet(tmp / "prompts.parquet", _parquet_safe(self.prompts))
            for name, result in self.results.items():
                result.save(tmp / "results" / name)
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> AttributionReport:
        """Read a report directory written by :meth:`save`."""
        folder = Path(directory)
        if not folder.is_dir():
            raise ResultError(f"no report directory at {folder}")
        missing = [f for f in _FILES if not (folder / f).is_file()]
        if missing:
            raise ResultError(f"{folder} is not a complete report directory: missing {', '.join(missing)}")
        try:
            summary = json.loads((folder / "summary.json").read_text())
        except json.JSONDecodeError as err:
            raise ResultError(f"{folder / 'summary.json'} is not valid JSON: {err}") from err
        results = {name: Result.load(folder / rel) for name, rel in summary.get("results", {}).items()}
        top = folder / "top_prompts.json"
        circuit = results.get("circuit")
        return cls(
            heads=pd.read_parquet(folder / "heads.parquet"),
            neurons=pd.read_parquet(folder / "neurons.parquet"),
            circuit=circuit if isinstance(circuit, CircuitResult) else None,
            results=results,
            summary=summary,
            prompts=pd.read_parquet(folder / "prompts.parquet"),
            top_prompts=json.loads(top.read_text()) if top.is_file() else {},
        )

    def write_html(self, path: str | os.PathLike[str]) -> Path:
        """Write the self-contained ``report.html`` (plotly inlined, works offline) atomically."""
        from arithinterp.reports.page import write_report_html

        return write_report_html(self, path)


def _json(obj: Any) -> str:
    return json.dumps(to_jsonable(obj), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def _parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(lambda v: v if v is None or isinstance(v, str) else json.dumps(to_jsonable(v)))
    return out


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


def build_report(
    model: Any,
    task: TaskSpec | PromptSet | str | None = None,
    *,
    pairs: str | PromptPairs = "auto",
    n: int | None = None,
    methods: str | Sequence[str] = "all",
    target: float = 0.9,
    seed: int = 0,
    progress: bool = True,
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
        methods: ``"all"`` or a subset of :data:`~arithinterp.reports.inputs.METHODS`.
        target: the faithfulness the circuit must reach.
        seed: seed of the prompts, pairs, bootstrap intervals and probe splits.
        progress: show progress bars.

    Bad input raises an :class:`~arithinterp.errors.ArithInterpError` subclass before
    any forward pass. A method that does not apply is skipped; ``summary["skipped"]``
    says why.
    """
    if not 0.0 < float(target) <= 1.5:
        from arithinterp.errors import ConfigError

        raise ConfigError(f"target is a faithfulness (1 = the full model), in (0, 1.5]; got {target}")
    inp = resolve_inputs(model, task, pairs=pairs, n=n, methods=methods, seed=seed)
    results: dict[str, Result] = {}
    skipped: dict[str, str] = {}
    timings: dict[str, float] = {}
    ran: list[str] = []
    for method in tqdm(inp.methods, desc="report", disable=not progress):
        if method not in RUNNERS:  # pragma: no cover - METHODS and RUNNERS are defined together
            continue
        start = time.perf_counter()
        kwargs: dict[str, Any] = {}
        if method == "mediation":
            kwargs["results"] = results
        if method == "circuit":
            kwargs["target"] = float(target)
        try:
            results.update(RUNNERS[method](inp, seed, progress, **kwargs))
            ran.append(method)
        except Skip as why:
            skipped[method] = str(why)
        timings[method] = round(time.perf_counter() - start, 3)
    for method in METHODS:
        if method not in inp.methods:
            skipped.setdefault(method, "not requested (methods=...)")

    accuracy = evaluate(inp.model, inp.prompts, progress=False)
    heads = head_table(inp.model, results)
    neurons, n_neurons = neuron_table(inp.model, results)
    circuit = results.get("circuit")
    ranked = pd.concat([heads[["component", "patch_effect", "atp"]], neurons[["component", "patch_effect", "atp"]]])
    key = ranked["patch_effect"].abs() if ranked["patch_effect"].notna().any() else ranked["atp"].abs()
    top_components = ranked.assign(_k=key.fillna(-1)).sort_values("_k", ascending=False, kind="stable")
    labels = heads["component"].head(TOP_PROMPT_COMPONENTS).tolist() + \
        neurons["component"].head(TOP_PROMPT_COMPONENTS).tolist()
    summary = {
        "model": inp.model.spec if isinstance(inp.model.spec, str) else inp.model.name,
        "task": inp.prompts.spec.model_dump(mode="json"),
        "n_prompts": len(inp.prompts),
        "n_pairs": len(inp.pairs),
        "pairs": inp.pairs.kind,
        "answer": inp.answer,
        "accuracy": accuracy.accuracy,
        "accuracy_per_digit": [float(x) for x in accuracy.per_digit.to_numpy()],
        "seed": seed,
        "versions": library_versions(),
        "methods": ran,
        "skipped": skipped,
        "timings_s": timings,
        "circuit": None if circuit is None else {
            "components": list(circuit.circuit),
            "faithfulness": circuit.circuit_faithfulness,
            "target": circuit.target,
            "size": len(circuit.circuit),
            "metric": circuit.meta.options.get("metric"),
            "reached": circuit.reached,
            "full_score": circuit.full_score,
            "circuit_ablated_score": circuit.circuit_ablated_score,
            "empty_score": circuit.empty_score,
        },
        "top_components": top_components["component"].head(50).tolist(),
        "n_heads": len(heads),
        "n_neurons": n_neurons,
        "neurons_kept": len(neurons),
        "top_prompts_value": "dla" if "dla" in results else None,
        "results": {name: f"results/{name}" for name in results},
    }
    return AttributionReport(
        heads=heads, neurons=neurons, circuit=circuit if isinstance(circuit, CircuitResult) else None,
        results=results, summary=to_jsonable(summary), prompts=inp.prompts.frame.copy(),
        top_prompts=_top_prompts(results, inp.prompts, labels),
    )
