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

Every step's options mirror the keyword arguments of its method.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from arithinterp.errors import ConfigError
from arithinterp.tasks import TaskSpec

SiteKindName = Literal[
    "embed", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "attn_head",
    "q", "k", "v", "pattern", "mlp_post", "final_resid",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EvaluateStep(_Strict):
    """Exact-match accuracy (:func:`arithinterp.methods.evaluate`)."""

    kind: Literal["evaluate"]
    name: str | None = None
    batch_size: int = Field(256, ge=1)


class LogitLensStep(_Strict):
    """Logit lens (:func:`arithinterp.methods.logit_lens`)."""

    kind: Literal["logit_lens"]
    name: str | None = None
    k: int = Field(5, ge=1, le=50)
    batch_size: int = Field(256, ge=1)


class PairsConfig(_Strict):
    """Clean/corrupt pairs made from the task (:func:`arithinterp.tasks.make_pairs`)."""

    kind: Literal["operand_a", "operand_b", "digit", "operator", "same_answer", "random"] = "operand_a"
    column: int | None = None
    operand: Literal["a", "b"] = "a"
    seed: int = 0
    on_impossible: Literal["raise", "drop"] = "raise"


class _SweepStep(_Strict):
    """Options shared by the site sweeps (patching and attribution patching)."""

    name: str | None = None
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


class MediationStep(_Strict):
    """Causal mediation, Stolfo et al. 2023 (:func:`arithinterp.methods.mediate`)."""

    kind: Literal["mediation"]
    name: str | None = None
    components: tuple[Literal["mlp_out", "attn_out"], ...] = ("mlp_out", "attn_out")
    per_position: bool = True
    heads: bool = False
    answer: Literal["single", "multi"] = "single"
    eps: float = Field(1e-10, ge=0)
    batch_size: int = Field(64, ge=1)
    n_boot: int = Field(1000, ge=1)


PAIRED_STEPS = ("patching", "attribution", "mediation")

Step = Annotated[
    EvaluateStep | LogitLensStep | PatchingStep | AttributionStep | MediationStep,
    Field(discriminator="kind"),
]


class PipelineConfig(_Strict):
    """A whole pipeline: model, task, steps."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model: str
    backend: Literal["transformer_lens", "nnsight"] = "transformer_lens"
    dtype: Literal["float32", "float64"] = "float32"
    device: str = "cpu"
    seed: int = 0
    task: TaskSpec
    pairs: PairsConfig | None = None
    steps: list[Step] = Field(min_length=1)
    report: bool = True

    @model_validator(mode="after")
    def _pairs_for_causal_steps(self) -> PipelineConfig:
        needing = [f"steps[{i}] ({s.kind})" for i, s in enumerate(self.steps) if s.kind in PAIRED_STEPS]
        if needing and self.pairs is None:
            raise ValueError(
                f"pairs: required by {', '.join(needing)}; add e.g. `pairs: {{kind: operand_a}}`"
            )
        return self

    @model_validator(mode="after")
    def _unique_step_names(self) -> PipelineConfig:
        names = [step_name(s, i) for i, s in enumerate(self.steps)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"step names must be unique; repeated: {dupes} (set `name:` on steps)")
        return self

    def step_names(self) -> list[str]:
        return [step_name(s, i) for i, s in enumerate(self.steps)]

    def fingerprint(self, step_index: int) -> str:
        """A hash of everything that determines a step's result."""
        payload = {
            "model": self.model, "backend": self.backend, "dtype": self.dtype, "seed": self.seed,
            "task": self.task.model_dump(mode="json"),
            "pairs": self.pairs.model_dump(mode="json") if self.pairs else None,
            "step": self.steps[step_index].model_dump(mode="json"),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def step_name(step: Any, index: int) -> str:
    return step.name or step.kind


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        path = ""
        for part in e["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        lines.append(f"{path or '<root>'}: {e['msg']}")
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


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read and validate a pipeline YAML; ``overrides`` are ``key=value`` (dotted keys).

    Raises :class:`ConfigError` naming every invalid path, e.g. ``steps[1].k: ...``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no pipeline config at {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping (name, model, task, steps)")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. task.n=500)")
        key, raw = item.split("=", 1)
        try:
            _set_override(data, key.strip(), raw)
        except (ValueError, IndexError, TypeError, AttributeError) as err:
            raise ConfigError(f"override {item!r} does not address the config: {err}") from err
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{path} does not validate:\n{_format_errors(err)}") from None
