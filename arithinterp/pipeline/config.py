"""Pipeline configuration: a YAML file validated whole before anything runs.

Example::

    name: add-5d-quickstart
    model: zoo:add-5d
    backend: transformer_lens
    seed: 0
    task: {operation: add, digits: 5, format: fixed, n: 2000, sampling: balance_classes}
    steps:
      - {kind: evaluate}
      - {kind: logit_lens, k: 5}

Several tasks are named under ``tasks:`` (a mapping ``name -> task``) and a step
picks one with ``task: <name>`` (default: the first). With no ``task:`` (or ``task:
default``, or ``task: {default: true, n: 500}`` to change some fields) a zoo model's own task
is used (``model.default_task``: the format it was trained on); a model trained on several
operators (``addsub``, ``ops_tok``) gets one named task per operator. Every step's options
mirror the keyword arguments of its method; the full reference is
``docs/pipelines.md``. Errors name the YAML path (``steps[3].sites: ...``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import torch
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from arithinterp.errors import ArithInterpError, ConfigError, TaskError
from arithinterp.methods.circuit_ablation import CircuitAblation
from arithinterp.methods.registry import MethodSpec, get_method, methods, registry_version
from arithinterp.tasks import TaskSpec
from arithinterp.tasks.spec import MAX_PROMPTS, MAX_SEED


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PairsConfig(_Strict):
    """Clean/corrupt pairs made from the task (:func:`arithinterp.tasks.make_pairs`)."""

    kind: Literal["operand_a", "operand_b", "digit", "operator", "same_answer", "random"] = "operand_a"
    column: int | None = None
    operand: Literal["a", "b"] = "a"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    on_impossible: Literal["raise", "drop"] = "raise"


class _Step(_Strict):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    task: str | None = None  # a name under `tasks:` (default: the first task)

    def default_name(self) -> str:
        return self.kind  # type: ignore[attr-defined]


class _PairedStep(_Step):
    pairs: PairsConfig | None = None  # default: the pipeline's `pairs:`


class ReportStep(_Step):
    """The attribution report (:func:`arithinterp.reports.build_report`): every applicable
    method on the step's task, aggregated into head/neuron tables and a circuit; written as a
    report directory (report.html, summary.json, tables, results/) at ``runs/<name>/report/``.

    ``n``: prompts and pairs (default: the task's ``n``); ``pairs``: ``auto`` (random
    counterfactuals) or a pair kind; ``methods``: ``all`` or the registered methods that have a
    report view; ``target``: the circuit's faithfulness target; ``ablation``: what replaces a
    component outside the circuit (``mean``, ``zero``, ``resample``, ``counterfactual``,
    ``optimal``; see ``docs/methods/circuits.md``).
    """

    kind: Literal["report"]
    pairs: Literal["auto", "operand_a", "operand_b", "digit", "operator", "same_answer", "random"] = "auto"
    n: int | None = Field(None, ge=1, le=MAX_PROMPTS)
    methods: Literal["all"] | list[str] = "all"
    target: float = Field(0.9, gt=0)
    ablation: CircuitAblation = "mean"

    @field_validator("methods")
    @classmethod
    def _known(cls, v: Any) -> Any:
        if isinstance(v, list):
            known = [n for n, spec in methods().items() if spec.report is not None]
            bad = [m for m in v if m not in known]
            if bad:
                raise ValueError(f"{bad} are not report methods; valid: 'all' or any of {known}")
        return v


def _step_model(spec: MethodSpec) -> type[BaseModel]:
    """The pipeline step of a registered method: its options plus ``kind``, ``name``, ``task``
    (and ``pairs`` for a method on pairs)."""
    base = _PairedStep if spec.inputs == "pairs" else _Step
    camel = "".join(part.title() for part in spec.name.split("_"))
    return create_model(f"{camel}Step", __base__=(spec.options, base), __doc__=spec.options.__doc__,
                        kind=(Literal[spec.name], ...))  # type: ignore[valid-type]


_STEP_MODELS: dict[int, dict[str, type[BaseModel]]] = {}


def step_models() -> dict[str, type[BaseModel]]:
    """``kind -> step model``: one per registered method, and the report (built when the
    registry changes)."""
    registered = methods()
    version = registry_version()
    if version not in _STEP_MODELS:
        _STEP_MODELS.clear()
        models = {name: _step_model(spec) for name, spec in registered.items()}
        models["report"] = ReportStep
        _STEP_MODELS[version] = models
    return _STEP_MODELS[version]


def step_kinds() -> tuple[str, ...]:
    """Every step kind a pipeline accepts."""
    return tuple(step_models())


def step_method(step: Any) -> MethodSpec | None:
    """The registered method a step runs (``None`` for the report)."""
    return None if step.kind == "report" else get_method(step.kind)


def _validate_steps(value: Any) -> list[Any]:
    union = tuple(step_models().values())
    adapter = TypeAdapter(list[Annotated[Union[union], Field(discriminator="kind")]])  # noqa: UP007
    return adapter.validate_python(value)


class PipelineConfig(_Strict):
    """A whole pipeline: model, one or more tasks, steps."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model: str
    backend: Literal["transformer_lens", "nnsight"] = "transformer_lens"
    dtype: Literal["float32", "float64"] = "float32"
    device: str = "cpu"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    task: TaskSpec | None = None
    tasks: dict[str, TaskSpec] | None = None
    pairs: PairsConfig | None = None
    steps: list[Any] = Field(min_length=1)
    report: bool = True
    executor: Literal["local", "ray"] = "local"
    address: str | None = None  # a running Ray cluster (executor: ray); default: start a local one

    @model_validator(mode="before")
    @classmethod
    def _model_task_by_default(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("tasks") is not None:
            return data
        task = data.get("task")
        fields = _default_task_fields(task)
        if fields is None or not isinstance(data.get("model"), str):
            return data
        tasks = _model_tasks(data["model"])
        if not tasks:
            what = "no `task:` is given" if task is None else "`task: default` asks for its own task"
            raise ValueError(f"task: {what}, but model {data['model']!r} has none (only zoo models carry the "
                             "task they were trained on); give `task: {operation: ..., digits: ..., format: ...}`")
        if "operation" in fields and len(tasks) > 1:  # `operation:` picks one of the model's tasks
            picked = [t for t in tasks if t.operation == fields["operation"]]
            if not picked:
                raise ValueError(f"task: operation {fields['operation']!r} is not one of model "
                                 f"{data['model']!r}'s tasks ({', '.join(t.operation for t in tasks)})")
            tasks = picked
        try:
            specs = {t.operation: TaskSpec.parse({**t.model_dump(), **fields}) for t in tasks}
        except TaskError as err:
            raise ValueError(f"task: {err}") from None
        data = {k: v for k, v in data.items() if k != "task"}
        dumped = {name: spec.model_dump(mode="json", exclude_defaults=True) for name, spec in specs.items()}
        if len(dumped) == 1:
            data["task"] = next(iter(dumped.values()))
        else:
            data["tasks"] = dumped
        return data

    @field_validator("steps", mode="before")
    @classmethod
    def _registered_steps(cls, value: Any) -> Any:
        return _validate_steps(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _one_way_to_give_tasks(self) -> PipelineConfig:
        if (self.task is None) == (self.tasks is None):
            raise ValueError("give exactly one of `task:` (one task) or `tasks:` (a mapping name -> task)")
        if self.tasks is not None:
            if not self.tasks:
                raise ValueError("tasks: needs at least one named task")
            bad = [n for n in self.tasks if not n or "/" in n]
            if bad:
                raise ValueError(f"tasks: names must be non-empty and contain no '/': {bad}")
        return self

    @model_validator(mode="after")
    def _steps_fit_their_tasks(self) -> PipelineConfig:
        tasks = self.task_specs()
        for i, step in enumerate(self.steps):
            where = f"steps[{i}]"
            if step.task is not None and step.task not in tasks:
                raise ValueError(f"{where}.task: no task named {step.task!r}; tasks: {list(tasks)}")
            spec = tasks[self.task_name(step)]
            method = step_method(step)
            if method is None:
                continue
            if method.inputs == "pairs" and step.pairs is None and self.pairs is None:
                needing = [f"steps[{j}] ({s.kind})" for j, s in enumerate(self.steps)
                           if s.kind != "report" and get_method(s.kind).inputs == "pairs" and s.pairs is None]
                raise ValueError(
                    f"pairs: required by {', '.join(needing)}; add e.g. `pairs: {{kind: operand_a}}` "
                    "(or `pairs:` on the step)"
                )
            if method.inputs == "grid" and spec.operand_range is None and spec.operation != "modadd":
                raise ValueError(
                    f"{where}.task: {step.kind} needs the whole operand grid: give the task an "
                    "`operand_range: [lo, hi]` (or use operation: modadd)"
                )
            if method.task_check is not None:
                try:
                    method.task_check(step, spec)
                except ValueError as err:
                    raise ValueError(f"{where}.{err}") from None
        return self

    @model_validator(mode="after")
    def _unique_step_names(self) -> PipelineConfig:
        names = self.step_names()
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"steps: names must be unique; repeated: {dupes} (set `name:` on steps)")
        if "report" in names and any(s.kind != "report" and step_name(s) == "report" for s in self.steps):
            raise ValueError("steps: the name 'report' is reserved for the report step")
        return self

    # -- accessors ----------------------------------------------------------------------

    def task_specs(self) -> dict[str, TaskSpec]:
        """The tasks by name (a single ``task:`` is named ``task``)."""
        if self.tasks is not None:
            return dict(self.tasks)
        assert self.task is not None
        return {"task": self.task}

    def task_name(self, step: Any) -> str:
        return step.task if step.task is not None else next(iter(self.task_specs()))

    def step_task(self, step: Any) -> TaskSpec:
        return self.task_specs()[self.task_name(step)]

    def step_pairs(self, step: Any) -> PairsConfig | None:
        method = step_method(step)
        if method is None or method.inputs != "pairs":
            return None
        return step.pairs if step.pairs is not None else self.pairs

    def step_names(self) -> list[str]:
        return [step_name(s) for s in self.steps]

    def fingerprint(self, step_index: int, *, threads: int | None = None) -> str:
        """A hash of everything that determines a step's result (not its name, nor the task's name).

        That includes the device and the torch thread count the step runs with (``threads``,
        default: this process's): both change the last bits of float sums, and probe scores
        by up to 0.1, so a run resumed with another thread count recomputes instead of
        mixing numbers. Where the step runs (here or on Ray) does not enter it.
        """
        step = self.steps[step_index]
        pairs = self.step_pairs(step)
        payload = {
            "model": self.model, "backend": self.backend, "dtype": self.dtype, "seed": self.seed,
            "device": self.device, "threads": torch.get_num_threads() if threads is None else threads,
            "task": self.step_task(step).model_dump(mode="json"),
            "pairs": pairs.model_dump(mode="json") if pairs else None,
            "step": step.model_dump(mode="json", exclude={"name", "task"}),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _default_task_fields(task: Any) -> dict[str, Any] | None:
    """The fields to change in the model's own task when ``task`` asks for it (omitted,
    ``default``, or a mapping with ``default: true``); ``None`` when it is a task of its own."""
    if task is None or task == "default":
        return {}
    if isinstance(task, dict) and task.get("default") is True:
        return {k: v for k, v in task.items() if k != "default"}
    return None


def _model_tasks(model: str) -> tuple[TaskSpec, ...]:
    """A model spec's default tasks, read from its zoo card without loading it."""
    from arithinterp.zoo.default_tasks import spec_tasks

    try:
        return spec_tasks(model)
    except ArithInterpError as err:
        raise ValueError(f"model: {err}") from None


def step_name(step: Any) -> str:
    return step.name or step.default_name()


def _format_errors(err: ValidationError) -> str:
    kinds = step_kinds()
    lines = []
    for e in err.errors():
        path, previous = "", None
        for part in e["loc"]:
            if isinstance(previous, int) and part in kinds:
                previous = part  # the union's tag: `steps[3].sites`, not `steps[3].patching.sites`
                continue
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
            previous = part
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "union_tag_invalid":
            msg += f" (valid kinds: {', '.join(kinds)})"
        lines.append(f"{path}: {msg}" if path else msg)
    return "\n".join(lines)


def _set_override(data: dict, key: str, raw: str) -> None:
    parts = key.split(".")
    node: Any = data
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    value = yaml.safe_load(raw)
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def parse_config(data: Any, *, source: str = "config", overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Validate a pipeline given as a mapping (e.g. parsed YAML); see :func:`load_config`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a mapping (name, model, task(s), steps)")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. task.n=500)")
        key, raw = item.split("=", 1)
        if key.strip().startswith("task.") and "tasks" not in data and data.get("task") in (None, "default"):
            # `--set task.n=500` on the model's own task changes that task, not a plain-add default.
            data["task"] = {"default": True}
        try:
            _set_override(data, key.strip(), raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: the value is not valid YAML: {_yaml_problem(err)}") from None
        except (ValueError, IndexError, TypeError, AttributeError, KeyError) as err:
            raise ConfigError(f"override {item!r} does not address the config: {err}") from err
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source} does not validate:\n{_format_errors(err)}") from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read and validate a pipeline YAML; ``overrides`` are ``key=value`` (dotted keys,
    list items by index: ``steps.1.k=3``).

    Raises :class:`ConfigError` naming every invalid path, e.g. ``steps[1].k: ...``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no pipeline config at {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    return parse_config(data, source=str(path), overrides=overrides)


def _yaml_problem(err: yaml.YAMLError) -> str:
    problem = getattr(err, "problem", None)
    return f"{problem} (quote the value to pass it as a string)" if problem else str(err)
