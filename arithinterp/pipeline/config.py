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
picks one with ``task: <name>`` (default: the first). Every step's options
mirror the keyword arguments of its method; the full reference is
``docs/pipelines.md``. Errors name the YAML path (``steps[3].sites: ...``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from arithinterp.errors import ConfigError
from arithinterp.models.site import SiteKind
from arithinterp.tasks import TaskSpec

SiteKindName = SiteKind
ResidKind = Literal["resid_pre", "resid_mid", "resid_post"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PairsConfig(_Strict):
    """Clean/corrupt pairs made from the task (:func:`arithinterp.tasks.make_pairs`)."""

    kind: Literal["operand_a", "operand_b", "digit", "operator", "same_answer", "random"] = "operand_a"
    column: int | None = None
    operand: Literal["a", "b"] = "a"
    seed: int = 0
    on_impossible: Literal["raise", "drop"] = "raise"


class SiteRef(_Strict):
    """A residual-stream site named in YAML: ``{kind: resid_mid, layer: 0}``."""

    kind: ResidKind
    layer: int = Field(ge=0)


class _Step(_Strict):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    task: str | None = None  # a name under `tasks:` (default: the first task)

    def default_name(self) -> str:
        return self.kind  # type: ignore[attr-defined]


class _PairedStep(_Step):
    pairs: PairsConfig | None = None  # default: the pipeline's `pairs:`


class EvaluateStep(_Step):
    """Exact-match accuracy, per digit and complexity class (:func:`arithinterp.methods.evaluate`)."""

    kind: Literal["evaluate"]
    batch_size: int = Field(256, ge=1)


class LogitLensStep(_Step):
    """Logit lens (:func:`arithinterp.methods.logit_lens`); ``numbers`` restricts it to number tokens."""

    kind: Literal["logit_lens"]
    k: int = Field(5, ge=1, le=50)
    numbers: bool = False
    batch_size: int = Field(256, ge=1)


class NumberLensStep(_Step):
    """Number-token lens (:func:`arithinterp.methods.number_lens`): logits over the numbers per depth."""

    kind: Literal["number_lens"]
    batch_size: int = Field(256, ge=1)


class TunedLensStep(_Step):
    """Tuned lens (:func:`arithinterp.methods.train_tuned_lens`), trained on the first
    ``train_fraction`` of the prompts, read (:func:`~arithinterp.methods.tuned_lens`) and
    compared with the logit lens by KL (:func:`~arithinterp.methods.lens_kl`) on the rest."""

    kind: Literal["tuned_lens"]
    train_steps: int = Field(500, ge=1)
    lr: float = Field(0.01, gt=0)
    batch_positions: int = Field(1024, ge=1)
    train_fraction: float = Field(0.5, gt=0, lt=1)
    k: int = Field(5, ge=1, le=50)
    batch_size: int = Field(256, ge=1)


class _SweepStep(_PairedStep):
    """Options shared by the site sweeps (patching and attribution patching)."""

    sites: SiteKindName = "attn_head"
    per_position: bool = True
    direction: Literal["denoise", "noise"] = "denoise"
    normalize: bool = True
    answer: Literal["multi", "single"] = "multi"
    n_boot: int = Field(1000, ge=1)


class PatchingStep(_SweepStep):
    """Activation patching (:func:`arithinterp.methods.patch_activations`)."""

    kind: Literal["patching"]
    metric: Literal["logit_diff", "logprob", "prob", "accuracy", "relative_prob"] = "logit_diff"
    engine: Literal["fast", "literal"] = "fast"
    batch_size: int = Field(64, ge=1)


class AttributionStep(_SweepStep):
    """Attribution patching, AtP or EAP-IG (:func:`arithinterp.methods.attribution_patch`)."""

    kind: Literal["attribution"]
    metric: Literal["logit_diff", "logprob", "prob"] = "logit_diff"
    method: Literal["atp", "ig"] = "atp"
    ig_steps: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)


class MediationStep(_PairedStep):
    """Causal mediation, Stolfo et al. 2023 (:func:`arithinterp.methods.mediate`)."""

    kind: Literal["mediation"]
    components: tuple[Literal["mlp_out", "attn_out"], ...] = ("mlp_out", "attn_out")
    per_position: bool = True
    heads: bool = False
    answer: Literal["single", "multi"] = "single"
    eps: float = Field(1e-10, ge=0)
    batch_size: int = Field(64, ge=1)
    n_boot: int = Field(1000, ge=1)


class ProbesStep(_Step):
    """Linear probes for task annotations (:func:`arithinterp.methods.fit_probes`).

    ``targets`` are columns of the task's prompt frame (``SC_2``, ``c_hat_3``...);
    ``probe`` is the probe kind (``auto``: logistic for few classes, else ridge).
    """

    kind: Literal["probes"]
    targets: list[str] = Field(min_length=1)
    sites: Literal["resid"] | list[SiteRef] = "resid"
    positions: list[int] | None = None
    probe: Literal["auto", "logistic", "ridge", "circular"] = "auto"
    periods: list[int] = Field(default_factory=lambda: [2, 5, 10])
    test_fraction: float = Field(0.25, gt=0, lt=1)
    split: Literal["random", "operand"] = "random"
    control: bool = True
    #: Hewitt & Liang's input type for the control task: "auto" (the operand digits the
    #: target depends on), "operands", "token", or a list of annotation columns.
    control_by: Literal["auto", "operands", "token"] | list[str] = "auto"
    n_boot: int = Field(200, ge=0)
    l2: float = Field(1e-3, gt=0)
    batch_size: int = Field(256, ge=1)


FourierAnalysis = Literal["key_frequencies", "progress", "embedding", "unembedding", "activation", "filter"]


class FourierStep(_Step):
    """Fourier analyses (:mod:`arithinterp.methods.fourier`), one result per analysis.

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

    kind: Literal["fourier"]
    analyses: list[FourierAnalysis] = Field(min_length=1)
    threshold: float = Field(0.85, gt=0, le=1)
    layer: int | None = Field(None, ge=0)
    checkpoints: Literal["zoo"] | dict[int, str] = "zoo"
    train_fraction: float = Field(0.3, gt=0, lt=1)
    numbers: int | None = Field(None, ge=2)  # how many numbers 0..N-1 (default: the task's operands / all)
    site: SiteKindName = "mlp_post"
    bands: list[Literal["low", "high", "none"]] = Field(default_factory=lambda: ["low", "high"], min_length=1)
    cutoff_period: float = Field(10.0, gt=2)

    @field_validator("analyses")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"analyses repeat: {v}")
        return v


class HelixStep(_PairedStep):
    """Helix fits of an operand's representation (Kantamneni & Tegmark 2025), judged by
    patching the fitted activation into the corrupt prompts (:func:`arithinterp.methods.fit_helix`,
    :func:`~arithinterp.methods.patch_with_fit`).

    Fits on the task's prompts at ``site`` (layer ``layer``, position ``pos`` of operand a):
    ``kinds`` with ``periods``; ``own_periods: k`` adds a helix on the embedding
    spectrum's ``k`` strongest periods; ``shuffled`` adds the shuffled-value control.
    """

    kind: Literal["helix"]
    site: ResidKind = "resid_pre"
    layer: int = Field(0, ge=0)
    pos: int = 0
    periods: list[float] = Field(default_factory=lambda: [2.0, 5.0, 10.0, 100.0], min_length=1)
    kinds: list[Literal["helix", "circle", "pca"]] = Field(
        default_factory=lambda: ["helix", "circle", "pca"], min_length=1)
    own_periods: int = Field(4, ge=0)
    shuffled: bool = True
    n_pca: int = Field(100, ge=1)


class HeuristicsStep(_Step):
    """Nikankin et al.'s bag of heuristics (:mod:`arithinterp.methods.neurons`): K/KV maps of
    ``layer``'s neurons over the task's operand grid, classification at ``threshold``,
    and a knockout of the ``knockout`` heuristics implemented by the most neurons."""

    kind: Literal["heuristics"]
    layer: int | None = Field(None, ge=0)
    neurons: list[int] | None = None
    threshold: float = Field(0.6, gt=0, le=1)
    moduli: list[int] = Field(default_factory=lambda: list(range(2, 11)), min_length=1)
    knockout: int = Field(3, ge=0)
    knockout_n: int = Field(100, ge=1)
    batch_size: int = Field(1024, ge=1)


class CircuitStep(_PairedStep):
    """Circuit discovery to a faithfulness target (:func:`arithinterp.methods.discover_circuit`)."""

    kind: Literal["circuit"]
    components: list[Literal["attn_head", "mlp_out", "mlp_post"]] = Field(
        default_factory=lambda: ["attn_head", "mlp_out"], min_length=1)
    score: Literal["patching", "attribution"] = "patching"
    grow: Literal["topk", "greedy"] = "topk"
    target: float = Field(0.9, gt=0)
    metric: Literal["nl", "logit_diff", "accuracy"] = "nl"
    max_size: int | None = Field(None, ge=1)
    score_metric: Literal["logit_diff", "logprob", "prob"] = "logit_diff"
    direction: Literal["denoise", "noise"] = "denoise"
    answer: Literal["multi", "single"] = "multi"
    batch_size: int = Field(64, ge=1)


ReportMethod = Literal["patching", "attribution", "mediation", "dla", "probes", "fourier", "heuristics",
                       "logit_lens", "circuit"]


class ReportStep(_Step):
    """The attribution report (:func:`arithinterp.reports.build_report`): every applicable
    method on the step's task, aggregated into head/neuron tables and a circuit; written as a
    report directory (report.html, summary.json, tables, results/) at ``runs/<name>/report/``.

    ``n``: prompts and pairs (default: the task's ``n``); ``pairs``: ``auto`` (random
    counterfactuals) or a pair kind; ``target``: the circuit's faithfulness target.
    """

    kind: Literal["report"]
    pairs: Literal["auto", "operand_a", "operand_b", "digit", "operator", "same_answer", "random"] = "auto"
    n: int | None = Field(None, ge=1)
    methods: Literal["all"] | list[ReportMethod] = "all"
    target: float = Field(0.9, gt=0)


PAIRED_STEPS = ("patching", "attribution", "mediation", "circuit", "helix")
GRID_STEPS = ("heuristics",)  # need the whole operand grid (operand_range, or modadd)

AnyStep = (EvaluateStep | LogitLensStep | NumberLensStep | TunedLensStep | PatchingStep | AttributionStep
           | MediationStep | ProbesStep | FourierStep | HelixStep | HeuristicsStep | CircuitStep | ReportStep)
Step = Annotated[AnyStep, Field(discriminator="kind")]
STEP_KINDS: tuple[str, ...] = tuple(
    cls.model_fields["kind"].annotation.__args__[0] for cls in AnyStep.__args__  # type: ignore[union-attr]
)


def _task_columns(spec: TaskSpec) -> list[str]:
    """The annotation columns of a task's prompt frame (from a 2-prompt sample)."""
    from arithinterp.tasks import generate

    return list(generate(spec.model_copy(update={"n": min(spec.n, 2)})).frame.columns)


class PipelineConfig(_Strict):
    """A whole pipeline: model, one or more tasks, steps."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model: str
    backend: Literal["transformer_lens", "nnsight"] = "transformer_lens"
    dtype: Literal["float32", "float64"] = "float32"
    device: str = "cpu"
    seed: int = 0
    task: TaskSpec | None = None
    tasks: dict[str, TaskSpec] | None = None
    pairs: PairsConfig | None = None
    steps: list[Step] = Field(min_length=1)
    report: bool = True

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
        columns: dict[str, list[str]] = {}
        for i, step in enumerate(self.steps):
            where = f"steps[{i}]"
            if step.task is not None and step.task not in tasks:
                raise ValueError(f"{where}.task: no task named {step.task!r}; tasks: {list(tasks)}")
            spec = tasks[self.task_name(step)]
            if step.kind in PAIRED_STEPS and step.pairs is None and self.pairs is None:
                needing = [f"steps[{j}] ({s.kind})" for j, s in enumerate(self.steps)
                           if s.kind in PAIRED_STEPS and s.pairs is None]
                raise ValueError(
                    f"pairs: required by {', '.join(needing)}; add e.g. `pairs: {{kind: operand_a}}` "
                    "(or `pairs:` on the step)"
                )
            if step.kind in GRID_STEPS and spec.operand_range is None and spec.operation != "modadd":
                raise ValueError(
                    f"{where}.task: {step.kind} needs the whole operand grid: give the task an "
                    "`operand_range: [lo, hi]` (or use operation: modadd)"
                )
            if step.kind == "probes":
                name = self.task_name(step)
                if name not in columns:
                    columns[name] = _task_columns(spec)
                missing = [t for t in step.targets if t not in columns[name]]
                if missing:
                    raise ValueError(
                        f"{where}.targets: {missing} are not annotations of task {name!r}; valid: "
                        f"{[c for c in columns[name] if c not in ('prompt', 'query', 'answer_text', 'operator', 'operation', 'complexity')]}"
                    )
            if step.kind == "fourier":
                modular = [a for a in step.analyses if a in ("key_frequencies", "progress", "activation")]
                if modular and spec.operation != "modadd":
                    raise ValueError(
                        f"{where}.analyses: {modular} need a modadd task (operation: modadd); "
                        "for other tasks use embedding / unembedding"
                    )
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
        if step.kind not in PAIRED_STEPS:
            return None
        return step.pairs if step.pairs is not None else self.pairs

    def step_names(self) -> list[str]:
        return [step_name(s) for s in self.steps]

    def fingerprint(self, step_index: int) -> str:
        """A hash of everything that determines a step's result (not its name, nor the task's name)."""
        step = self.steps[step_index]
        pairs = self.step_pairs(step)
        payload = {
            "model": self.model, "backend": self.backend, "dtype": self.dtype, "seed": self.seed,
            "task": self.step_task(step).model_dump(mode="json"),
            "pairs": pairs.model_dump(mode="json") if pairs else None,
            "step": step.model_dump(mode="json", exclude={"name", "task"}),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def step_name(step: Any) -> str:
    return step.name or step.default_name()


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        path, previous = "", None
        for part in e["loc"]:
            if isinstance(previous, int) and part in STEP_KINDS:
                previous = part  # the union's tag: `steps[3].sites`, not `steps[3].patching.sites`
                continue
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
            previous = part
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "union_tag_invalid":
            msg += f" (valid kinds: {', '.join(STEP_KINDS)})"
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
        try:
            _set_override(data, key.strip(), raw)
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
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    return parse_config(data, source=str(path), overrides=overrides)
