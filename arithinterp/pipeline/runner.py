"""Run a validated pipeline: every check first, then each step, then the report.

Layout of a run::

    runs/<name>/
      config.yaml          the validated config (with overrides applied)
      <step>/              one saved Result per step, written atomically
      <step>/step.json     written last: the step is complete when it exists
      report.html          self-contained, with every step's figures

A step whose ``step.json`` matches the config's fingerprint is skipped on a
rerun (``force=True`` recomputes), so an interrupted run resumes where it
stopped and loses nothing.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from tqdm.auto import tqdm

from arithinterp.methods.metrics import tokenize_pairs
from arithinterp.models import Model, load_model
from arithinterp.models.loading import resolve_spec
from arithinterp.pipeline.config import PipelineConfig, step_name
from arithinterp.reports import ReportSection, write_html_report
from arithinterp.results import Result
from arithinterp.results.io import atomic_write_text
from arithinterp.tasks import PromptSet, generate, make_pairs, tokenize


@dataclass
class RunSummary:
    """What a finished run produced."""

    run_dir: Path
    report: Path | None
    results: dict[str, Result] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("arithinterp", "torch", "transformer_lens", "nnsight", "transformers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _run_step(step: Any, model: Model, prompts: PromptSet, pairs: Any, seed: int) -> Result:
    from arithinterp import methods

    if step.kind == "evaluate":
        return methods.evaluate(model, prompts, batch_size=step.batch_size)
    if step.kind == "logit_lens":
        return methods.logit_lens(model, prompts, k=step.k, batch_size=step.batch_size)
    options = step.model_dump(exclude={"kind", "name"})
    if step.kind in ("patching", "attribution"):
        options["kind"] = options.pop("sites")
        fn = methods.patch_activations if step.kind == "patching" else methods.attribution_patch
        return fn(model, pairs, seed=seed, **options)
    if step.kind == "mediation":
        return methods.mediate(model, pairs, seed=seed, **options)
    raise AssertionError(f"unhandled step kind {step.kind}")  # the config validated it


def _make_pairs(config: PipelineConfig, prompts: PromptSet, model: Model) -> Any:
    """Clean/corrupt pairs, tokenized up front so a length mismatch fails before any step."""
    if config.pairs is None:
        return None
    spec = config.pairs
    pairs = make_pairs(prompts, spec.kind, column=spec.column, operand=spec.operand, seed=spec.seed,
                       on_impossible=spec.on_impossible)
    for step in config.steps:
        if step.kind in ("patching", "attribution", "mediation"):
            tokenize_pairs(pairs, model.tokenizer, answer=step.answer)
    return pairs


def _is_complete(step_dir: Path, fingerprint: str) -> bool:
    marker = step_dir / "step.json"
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("fingerprint") == fingerprint
    except (OSError, json.JSONDecodeError):
        return False


def run_pipeline(
    config: PipelineConfig,
    *,
    runs_dir: str | Path = "runs",
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> RunSummary:
    """Run ``config``: validate model, task and tokenization up front, then every step."""
    resolve_spec(config.model)  # a missing zoo name or directory fails before any work
    torch.manual_seed(config.seed)
    prompts = generate(config.task)
    model = load_model(config.model, backend=config.backend, device=config.device, dtype=config.dtype)
    tokenize(prompts, model.tokenizer, answer="multi")  # fails early if the task cannot be scored
    pairs = _make_pairs(config, prompts, model)

    run_dir = Path(runs_dir) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    summary = RunSummary(run_dir=run_dir, report=None)
    names = config.step_names()
    bar = tqdm(list(enumerate(config.steps)), desc=config.name, disable=not progress)
    for index, step in bar:
        name = names[index]
        bar.set_postfix_str(name)
        step_dir = run_dir / name
        fingerprint = config.fingerprint(index)
        if not force and _is_complete(step_dir, fingerprint):
            summary.results[name] = Result.load(step_dir)
            summary.skipped.append(name)
            continue
        start = time.perf_counter()
        result = _run_step(step, model, prompts, pairs, config.seed)
        result.save(step_dir)
        record = {
            "step": name,
            "kind": step.kind,
            "fingerprint": fingerprint,
            "options": step.model_dump(mode="json"),
            "seed": config.seed,
            "dataset_hash": prompts.hash,
            "seconds": round(time.perf_counter() - start, 3),
            "versions": versions(),
        }
        atomic_write_text(step_dir / "step.json", json.dumps(record, indent=2))
        summary.results[name] = result
    if config.report:
        summary.report = write_run_report(config, summary.results, run_dir / "report.html")
    return summary


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


def write_run_report(config: PipelineConfig, results: dict[str, Result], path: Path) -> Path:
    """Write the self-contained HTML report of a run."""
    sections = [
        ReportSection(
            title="Run",
            figures=[],
            tables=[pd.DataFrame({"field": ["model", "backend", "task", "seed"], "value": [
                config.model, config.backend, json.dumps(config.task.model_dump(mode="json")), config.seed,
            ]})],
            text=f"Pipeline {config.name}: {len(results)} steps.",
        )
    ]
    for index, step in enumerate(config.steps):
        name = step_name(step, index)
        result = results[name]
        sections.append(
            ReportSection(
                title=f"{name} ({step.kind})",
                figures=[result.plot()],
                tables=[_summary_table(result)],
                text=repr(result),
            )
        )
    return write_html_report(path, title=f"arithinterp: {config.name}", sections=sections)
