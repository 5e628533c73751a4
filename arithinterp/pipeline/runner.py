"""Run a validated pipeline: every check first, then each step, then the report.

Layout of a run::

    runs/<name>/
      config.yaml          the validated config (with overrides applied)
      <step>/              the step's saved Result, or <step>/<part>/ for a step with parts
      <step>/step.json     config, fingerprint, seed, versions, timing; the step is complete
                           when it exists
      report/              the attribution report directory (the `report` step), with the
                           run's one copy of plotly.min.js
      report.html          the run's first page: a link to report/report.html and the circuit,
                           then every step's figures (offline: plotly.js from that local copy,
                           or plotly.min.js beside it in a run without a report step)

Each step is built in a temporary directory ``.<step>.tmp-*`` beside its final
place and renamed onto it only when complete, so a killed run never leaves a
half-written step. On a rerun, leftover temporary directories are removed and
every step whose ``step.json`` matches the config's fingerprint is loaded
instead of recomputed (``force=True`` recomputes); every step reseeds the
global generators first, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from arithinterp.distributed import Executor, make_executor
from arithinterp.errors import ArithInterpError, ChanceAccuracyWarning, ResultError
from arithinterp.models import Model, load_model
from arithinterp.models.loading import resolve_spec
from arithinterp.pipeline.config import PipelineConfig, step_name
from arithinterp.pipeline.executors import StepRunner
from arithinterp.pipeline.limits import check_memory, estimate_run_bytes
from arithinterp.pipeline.rundir import claimed_run_dir
from arithinterp.pipeline.steps import RunContext, check_step, output_warnings, seed_everything
from arithinterp.progress_bars import tqdm
from arithinterp.reports import ReportSection, write_html_report
from arithinterp.reports.html import PLOTLY_JS, write_plotly_js
from arithinterp.results import Result
from arithinterp.results.io import atomic_dir, atomic_write_text
from arithinterp.results.meta import library_versions
from arithinterp.tasks import (
    PromptPairs,
    PromptSet,
    generate,
    make_pairs,
    shared_tokenization,
    tokenize,
)
from arithinterp.tasks.tokenization import check_context

STEP_FILE = "step.json"


@dataclass
class RunSummary:
    """What a finished run produced.

    ``results``: every step's results by their path under the run directory
    (``evaluate``, or ``heuristics/classification`` for a step with parts).
    ``artifacts``: other saved objects (a trained tuned lens), by the same paths.
    ``warnings``: per step, the warnings its output carries (a model at chance level on the
    step's prompts, :class:`~arithinterp.errors.ChanceAccuracyWarning`); each was logged.
    """

    run_dir: Path
    report: Path | None
    results: dict[str, Result] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)
    attribution_report: Path | None = None
    warnings: dict[str, list[str]] = field(default_factory=dict)

    def add(self, step: str, parts: dict[str, Any]) -> None:
        for part, value in parts.items():
            key = f"{step}/{part}" if part else step
            (self.results if isinstance(value, Result) else self.artifacts)[key] = value

    def step_results(self, step: str) -> dict[str, Result]:
        """The results of one step (keys as in :attr:`results`)."""
        return {k: v for k, v in self.results.items() if k == step or k.startswith(f"{step}/")}

    def circuit(self) -> Any:
        """The last circuit found (a :class:`~arithinterp.methods.CircuitResult`), if any."""
        from arithinterp.methods import CircuitResult

        found = [r for r in self.results.values() if isinstance(r, CircuitResult)]
        return found[-1] if found else None


def _task_name_error(err: ArithInterpError, where: str) -> ArithInterpError:
    """The same error with the YAML path it concerns in front of its message."""
    try:
        return type(err)(f"{where}: {err}")
    except TypeError:  # an error class with a custom constructor: keep it, say where in a note
        err.add_note(f"at {where}")
        return err


@dataclass
class _Inputs:
    """Prompts per task and pairs per (task, pairs config), generated once and shared by steps."""

    config: PipelineConfig
    prompts: dict[str, PromptSet] = field(default_factory=dict)
    pairs: dict[tuple[str, str], PromptPairs] = field(default_factory=dict)

    def task_prompts(self, name: str) -> PromptSet:
        if name not in self.prompts:
            self.prompts[name] = generate(self.config.task_specs()[name])
        return self.prompts[name]

    def step_pairs(self, step: Any) -> PromptPairs | None:
        spec = self.config.step_pairs(step)
        if spec is None:
            return None
        task = self.config.task_name(step)
        key = (task, spec.model_dump_json())
        if key not in self.pairs:
            self.pairs[key] = make_pairs(self.task_prompts(task), spec.kind, column=spec.column,
                                         operand=spec.operand, seed=spec.seed, on_impossible=spec.on_impossible)
        return self.pairs[key]

    def context(self, step: Any, model: Model, seed: int, progress: bool) -> RunContext:
        task = self.config.task_name(step)
        return RunContext(model=model, model_spec=self.config.model, spec=self.config.task_specs()[task],
                          prompts=self.task_prompts(task), pairs=self.step_pairs(step), seed=seed,
                          progress=progress)


def _task_where(config: PipelineConfig, name: str) -> str:
    return "task" if config.tasks is None else f"tasks.{name}"


def preflight(config: PipelineConfig, *, progress: bool = False) -> tuple[Model, _Inputs]:
    """Everything that can fail before any step runs: the model, each task's prompts and
    tokenization, each step's pairs and options against the model. Errors name the YAML path."""
    try:
        resolve_spec(config.model)  # a missing zoo name or directory fails before loading anything
        model = load_model(config.model, backend=config.backend, device=config.device, dtype=config.dtype)
    except ArithInterpError as err:
        raise _task_name_error(err, "model") from None
    inputs = _Inputs(config)
    used = {config.task_name(s) for s in config.steps}
    for name, spec in config.task_specs().items():
        if name not in used:
            continue
        try:
            _check_task_fits(config, name, model)
            tokenized = tokenize(inputs.task_prompts(name), model.tokenizer, answer="multi")
            check_context(tokenized.tokens.shape[1], model.shape.n_ctx, spec)
        except ArithInterpError as err:
            raise _task_name_error(err, _task_where(config, name)) from None
    for index, step in enumerate(config.steps):
        where = f"steps[{index}] ({step_name(step)})"
        try:
            ctx = inputs.context(step, model, config.seed, progress)
            check_step(step, ctx)
        except ArithInterpError as err:
            raise _task_name_error(err, where) from None
    return model, inputs


def _check_task_fits(config: PipelineConfig, task: str, model: Model) -> None:
    """Refuse a task whose prompts would not fit in memory, before generating them (the
    prompt length is bounded by the context, which tokenization checks next). A report step
    may ask for more prompts than its task has (its ``n``)."""
    sizes = [config.task_specs()[task].n]
    sizes += [s.n for s in config.steps if s.kind == "report" and s.n and config.task_name(s) == task]
    n = max(sizes)
    check_memory(estimate_run_bytes(model.shape, n, model.shape.n_ctx, model.dtype.itemsize),
                 f"a task of {n:_} prompts on {model.name}")


def _is_complete(step_dir: Path, fingerprint: str) -> bool:
    marker = step_dir / STEP_FILE
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("fingerprint") == fingerprint
    except (OSError, json.JSONDecodeError):
        return False


def _save_output(output: Any, folder: Path) -> dict[str, str]:
    """Save a step's output into ``folder``; returns ``{part: class}`` (part "" = the folder itself)."""
    parts = {"": output} if not isinstance(output, dict) else output
    kinds = {}
    for part, value in parts.items():
        value.save(folder / part if part else folder)
        kinds[part] = type(value).__name__
    return kinds


def _load_output(step_dir: Path, parts: dict[str, str]) -> dict[str, Any]:
    out = {}
    for part, kind in parts.items():
        folder = step_dir / part if part else step_dir
        if kind == "TunedLens":
            from arithinterp.methods import TunedLens

            out[part] = TunedLens.load(folder)
        elif kind == "AttributionReport":
            from arithinterp.reports import AttributionReport

            out[part] = AttributionReport.load(folder)
        else:
            out[part] = Result.load(folder)
    return out


def _load_complete(step_dir: Path) -> dict[str, Any]:
    """A completed step's outputs; a damaged one raises ``ResultError`` saying how to redo it."""
    try:
        record = json.loads((step_dir / STEP_FILE).read_text())
        return _load_output(step_dir, record.get("parts", {"": "Result"}))
    except ArithInterpError as err:
        raise ResultError(f"{err}\nThe completed step {step_dir.name} cannot be reloaded; "
                          "rerun with --force (force=True) to recompute it") from None
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise ResultError(f"{step_dir / STEP_FILE} is damaged ({type(err).__name__}: {err}); "
                          "rerun with --force (force=True) to recompute the step") from None


def _clean_stale(run_dir: Path) -> list[Path]:
    """Remove the temporary directories an interrupted run left behind."""
    stale = [p for p in run_dir.iterdir()
             if p.name.startswith(".") and (".tmp-" in p.name or p.name.endswith(".tmp"))]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def run_pipeline(
    config: PipelineConfig,
    *,
    runs_dir: str | Path = "runs",
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    executor: str | Executor | None = None,
    address: str | None = None,
) -> RunSummary:
    """Run ``config``: check model, tasks, pairs and every step's options up front, then each step.

    ``executor`` (default: the config's ``executor:``, ``"local"``) and ``address`` choose where
    steps run (:mod:`arithinterp.pipeline.executors`); ``"ray"`` connects before anything is
    loaded or written, so an unreachable cluster fails fast with nothing on disk.

    A step is computed in a temporary directory beside ``runs/<name>/<step>/`` and renamed
    onto it with its ``step.json`` only when complete; a complete step whose fingerprint
    matches is loaded instead of recomputed (``force=True`` recomputes). Each task's prompts
    are tokenized once for the whole run (:func:`~arithinterp.tasks.shared_tokenization`).
    """
    where = make_executor(executor or config.executor, address=address or config.address)
    try:
        with shared_tokenization():
            return _run_pipeline(config, runs_dir=runs_dir, force=force, progress=progress, log=log,
                                 executor=where)
    finally:
        if where is not executor:  # made here from a name: ours to close
            where.close()


def _run_pipeline(config: PipelineConfig, *, runs_dir: str | Path, force: bool, progress: bool,
                  log: Callable[[str], None], executor: Executor) -> RunSummary:
    # the run directory is checked and locked before the model loads
    with claimed_run_dir(Path(runs_dir) / config.name) as run_dir:
        model, inputs = preflight(config, progress=progress)
        for stale in _clean_stale(run_dir):
            log(f"removed {stale.name} (left by an interrupted run)")
        atomic_write_text(run_dir / "config.yaml",
                          yaml.safe_dump(config.model_dump(mode="json", exclude_none=True), sort_keys=False))
        summary = RunSummary(run_dir=run_dir, report=None)
        names = config.step_names()
        fingerprints = [config.fingerprint(i, threads=executor.threads) for i in range(len(config.steps))]
        runner = StepRunner(executor, model)
        runner.start([(i, step, inputs.context(step, model, config.seed, progress))
                      for i, step in enumerate(config.steps)
                      if force or not _is_complete(run_dir / names[i], fingerprints[i])], config.seed)
        bar = tqdm(list(enumerate(config.steps)), desc=config.name, unit="step", disable=not progress)
        for index, step in bar:
            name = names[index]
            bar.set_postfix_str(name)
            step_dir = run_dir / name
            fingerprint = fingerprints[index]
            if not force and _is_complete(step_dir, fingerprint):
                loaded = _load_complete(step_dir)
                summary.add(name, loaded)
                summary.skipped.append(name)
                _note_warnings(summary, name, output_warnings(loaded), log)
                if step.kind == "report":
                    summary.attribution_report = step_dir
                continue
            ctx = inputs.context(step, model, config.seed, progress)
            seed_everything(config.seed)
            started = time.time()
            clock = time.perf_counter()
            with atomic_dir(step_dir) as tmp:
                with warnings.catch_warnings():  # logged below from the output, wherever it ran
                    warnings.simplefilter("ignore", ChanceAccuracyWarning)
                    output = runner.output(index, step, ctx)
                parts = _save_output(output, tmp)
                noted = _note_warnings(summary, name, output_warnings(output), log)
                pairs = config.step_pairs(step)
                record = {
                    "step": name,
                    "kind": step.kind,
                    "fingerprint": fingerprint,
                    "pipeline": config.name,
                    "model": config.model,
                    "backend": config.backend,
                    "dtype": config.dtype,
                    "device": config.device,
                    "threads": executor.threads,
                    "executor": executor.name,
                    "task_name": config.task_name(step),
                    "task": ctx.spec.model_dump(mode="json"),
                    "pairs": pairs.model_dump(mode="json") if pairs else None,
                    "options": step.model_dump(mode="json"),
                    "seed": config.seed,
                    "dataset_hash": ctx.prompts.hash,
                    "n_prompts": len(ctx.prompts),
                    "parts": parts,
                    "warnings": noted,
                    "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
                    "seconds": round(time.perf_counter() - clock, 3),
                    "versions": library_versions(),
                }
                atomic_write_text(tmp / STEP_FILE, json.dumps(record, indent=2))
            summary.add(name, output if isinstance(output, dict) else {"": output})
            if step.kind == "report":
                summary.attribution_report = step_dir
        bar.close()
        if config.report:
            summary.report = write_run_report(config, summary.results, run_dir / "report.html",
                                              attribution=_attribution(summary, run_dir),
                                              step_warnings=summary.warnings)
    return summary


def _note_warnings(summary: RunSummary, step: str, found: list[str], log: Callable[[str], None]) -> list[str]:
    """Log a step's warnings and keep them in the run summary; returns them."""
    if found:
        summary.warnings[step] = found
    for message in found:
        log(f"warning: step {step}: {message}")
    return found


def _summary_table(result: Result) -> pd.DataFrame:
    summary = getattr(result, "summary", None)
    if callable(summary):
        summary = summary()
        flat = {k: v for k, v in summary.items() if not isinstance(v, dict)}
        for key, sub in summary.items():
            if isinstance(sub, dict):
                flat.update({f"{key}[{k}]": v for k, v in sub.items()})
        return pd.DataFrame({"quantity": list(flat), "value": list(flat.values())})
    return result.top(10)


def _attribution(summary: RunSummary, run_dir: Path) -> tuple[str, Any] | None:
    """The run's attribution report: its directory relative to the run, and the report object."""
    if summary.attribution_report is None:
        return None
    rel = summary.attribution_report.relative_to(run_dir).as_posix()
    return rel, summary.artifacts.get(rel)


def _attribution_section(rel: str, report: Any) -> ReportSection:
    """The run page's first section: where the analysis is (link), the circuit and the head chart."""
    from arithinterp.methods.circuits import circuit_figure
    from arithinterp.reports.page import effect_figure

    text = [f"The head/neuron attribution report of this run is {rel}/report.html: every method's evidence "
            "per component, ranks, agreement flags and the circuit."]
    figures = []
    if report is not None:
        c = report.summary.get("circuit") or {}
        if c:
            f = c.get("faithfulness")
            text.append(f"Circuit ({c.get('granularity', 'components')}): {', '.join(c.get('components', []))}; "
                        f"faithfulness {'undefined' if f is None else f'{f:.3f}'} (target {c.get('target')}).")
        if report.circuit is not None:
            figures.append(circuit_figure(report.circuit, edges=report.results.get("circuit_edges")))
        figures.append(effect_figure(report.heads, "heads"))
    return ReportSection(title="Attribution report and circuit", figures=figures, text="\n\n".join(text),
                         links=[(f"{rel}/report.html", "Open the attribution report")])


def write_run_report(config: PipelineConfig, results: dict[str, Result], path: Path, *,
                     attribution: tuple[str, Any] | None = None,
                     step_warnings: dict[str, list[str]] | None = None) -> Path:
    """Write the HTML report of a run: the steps' warnings (``{step: [message]}``), a link to the
    attribution report with its circuit (when the run has a ``report`` step), then one section per
    step result. plotly.js is loaded from one local copy per run directory (the attribution
    report's, else ``plotly.min.js`` beside the page)."""
    sections = []
    if step_warnings:
        sections.append(ReportSection(title="Warnings", text="\n\n".join(
            f"{step}: {m}" for step, ms in step_warnings.items() for m in ms)))
    if attribution is not None:
        sections.append(_attribution_section(*attribution))
    sections += [
        ReportSection(
            title="Run",
            figures=[],
            tables=[pd.DataFrame({"field": ["model", "backend", "tasks", "seed"], "value": [
                config.model, config.backend,
                json.dumps({k: v.model_dump(mode="json") for k, v in config.task_specs().items()}), config.seed,
            ]})],
            text=f"Pipeline {config.name}: {len(config.steps)} steps.",
        )
    ]
    kinds = dict(zip(config.step_names(), (s.kind for s in config.steps)))
    for key, result in results.items():
        step = key.split("/", 1)[0]
        sections.append(
            ReportSection(
                title=f"{key} ({kinds.get(step, '?')})",
                figures=[result.plot()],
                tables=[_summary_table(result)],
                text=repr(result),
            )
        )
    shared = path.parent / attribution[0] / PLOTLY_JS if attribution is not None else None
    if shared is None or not shared.is_file():
        shared = write_plotly_js(path.parent)
    return write_html_report(path, title=f"arithinterp: {config.name}", sections=sections,
                             plotly_js=shared.relative_to(path.parent).as_posix())
