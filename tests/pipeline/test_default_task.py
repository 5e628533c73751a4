"""A pipeline without a task runs the model's own task; a step at chance level is logged and
recorded with the step (issue 14)."""

from __future__ import annotations

import html
import json
import warnings

import pytest

from arithinterp.errors import ChanceAccuracyWarning, ConfigError
from arithinterp.pipeline import run_pipeline
from arithinterp.pipeline.config import parse_config
from arithinterp.tasks import TaskSpec

MODULAR = TaskSpec(operation="modadd", format="modular", p=113)


def _cfg(**changes):
    return {"name": "own", "model": "zoo:modadd-113", "steps": [{"kind": "evaluate"}], **changes}


def test_no_task_means_the_models_own_task():
    assert parse_config(_cfg()).task == MODULAR
    assert parse_config(_cfg(task="default")).task == MODULAR
    assert parse_config(_cfg(task={"default": True, "n": 8, "seed": 2})).task == MODULAR.model_copy(
        update={"n": 8, "seed": 2})
    assert parse_config(_cfg(task={"operation": "modadd"})).task.format == "plain"  # a task of its own


def test_a_task_override_changes_the_models_own_task():
    """``--set task.n=8`` on a pipeline without ``task:`` (or with ``task: default``) keeps the
    model's task; a task of its own is overridden as written."""
    assert parse_config(_cfg(), overrides=["task.n=8"]).task == MODULAR.model_copy(update={"n": 8})
    assert parse_config(_cfg(task="default"), overrides=["task.seed=3"]).task == MODULAR.model_copy(
        update={"seed": 3})
    assert parse_config(_cfg(task={"operation": "add", "digits": 2, "format": "fixed"}),
                        overrides=["task.n=8"]).task.operation == "add"


def test_a_model_with_several_tasks_gets_one_per_operator(tmp_path):
    """Only the card is read while the config validates, so a card alone stands in for an addsub model."""
    (tmp_path / "card.json").write_text(json.dumps({"recipe": {"task": {"kind": "addsub", "n_digits": 3}}}))
    config = parse_config(_cfg(model=str(tmp_path), steps=[{"kind": "evaluate"}, {"kind": "evaluate", "name": "s",
                                                                                    "task": "sub"}]))
    assert {k: (v.operation, v.format, v.digits) for k, v in config.task_specs().items()} == {
        "add": ("add", "fixed", 3), "sub": ("sub", "fixed", 3)}
    assert config.task_name(config.steps[0]) == "add"


def test_operation_picks_one_of_several_default_tasks(tmp_path):
    (tmp_path / "card.json").write_text(json.dumps({"recipe": {"task": {"kind": "addsub", "n_digits": 3}}}))
    config = parse_config(_cfg(model=str(tmp_path), task={"default": True, "operation": "sub", "n": 9}))
    assert (config.task.operation, config.task.format, config.task.digits, config.task.n) == ("sub", "fixed", 3, 9)
    with pytest.raises(ConfigError, match="operation 'mul' is not one of"):
        parse_config(_cfg(model=str(tmp_path), task={"default": True, "operation": "mul"}))


@pytest.mark.parametrize(("model", "match"), [
    ("{tmp}", "has none"),  # a directory without a card
    ("zoo:nosuch", "model: no zoo model 'nosuch'"),
])
def test_no_task_and_no_default_is_a_config_error(tmp_path, model, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(_cfg(model=model.format(tmp=tmp_path)))
    with pytest.raises(ConfigError, match="bogus"):
        parse_config(_cfg(task={"default": True, "bogus": 1}))


def test_a_step_at_chance_level_is_logged_and_recorded(tmp_path):
    config = parse_config(_cfg(name="plain", task={"operation": "modadd", "n": 8}))
    lines: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChanceAccuracyWarning)  # reported through the log, not twice
        summary = run_pipeline(config, runs_dir=tmp_path, progress=False, log=lines.append)
    (line,) = [x for x in lines if x.startswith("warning:")]
    assert line.startswith("warning: step evaluate: zoo:modadd-113 answers")
    assert "format='plain' here, the model expects format='modular'" in line
    (message,) = summary.warnings["evaluate"]
    record = json.loads((tmp_path / "plain" / "evaluate" / "step.json").read_text())
    assert record["warnings"] == [message]
    page = html.unescape((tmp_path / "plain" / "report.html").read_text())
    assert f"evaluate: {message}" in page
    again: list[str] = []
    resumed = run_pipeline(config, runs_dir=tmp_path, progress=False, log=again.append)
    assert resumed.skipped == ["evaluate"] and resumed.warnings == summary.warnings
    assert line in again


def test_the_models_own_task_runs_without_warning(tmp_path):
    lines: list[str] = []
    summary = run_pipeline(parse_config(_cfg(task={"default": True, "n": 8})), runs_dir=tmp_path, progress=False,
                           log=lines.append)
    assert summary.results["evaluate"].accuracy == 1.0
    assert summary.warnings == {} and not any(x.startswith("warning:") for x in lines)
    assert json.loads((tmp_path / "own" / "evaluate" / "step.json").read_text())["warnings"] == []
