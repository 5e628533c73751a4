"""Training recipes: one YAML file per zoo model, validated by :class:`Recipe`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from arithinterp.errors import ConfigError

__all__ = ["RECIPE_DIR", "AuxLoss", "Recipe", "load_recipe", "recipe_names"]

RECIPE_DIR = Path(__file__).parent / "recipes"

TaskKind = Literal["add", "sub", "addsub", "mul", "modadd", "add_tok", "ops_tok"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskSpec(_Strict):
    """What the model computes and how prompts are written.

    ``add``: ``n_digits``-digit addition, digit tokens, answer MSD first.
    ``sub``: ``n_digits``-digit subtraction, digit tokens, answer a sign (``+``/``-``)
    then ``n_digits`` digits MSD first (``00123-45678=`` -> ``-45555``).
    ``addsub``: ``add`` and ``sub`` mixed, the operator token chooses.
    ``mul``: ``n_digits``-digit multiplication, digit tokens, answer LSD first
    (``answer_order: msd`` writes it most significant digit first).
    ``modadd``: ``(a + b) mod p``, number tokens, prompt ``"{a} {b} ="``.
    ``add_tok``: ``a + b`` with ``a, b < max_operand``, number tokens.
    ``ops_tok``: ``a ⊕ b`` for ⊕ in ``+ - * /`` (floor division), ``a, b < max_operand``,
    every number up to ``max_result`` one token; only problems whose result is in
    ``0..max_result`` (Nikankin et al.'s single-token filter).
    """

    kind: TaskKind
    n_digits: int | None = Field(default=None, ge=1, le=12)
    p: int | None = Field(default=None, ge=2)
    max_operand: int | None = Field(default=None, ge=2)
    max_result: int | None = Field(default=None, ge=1, le=20000)
    train_fraction: float | None = Field(default=None, gt=0, lt=1)
    answer_order: Literal["msd", "lsd"] | None = None

    @model_validator(mode="after")
    def _needs(self) -> TaskSpec:
        need = {
            "add": ("n_digits",),
            "sub": ("n_digits",),
            "addsub": ("n_digits",),
            "mul": ("n_digits",),
            "modadd": ("p", "train_fraction"),
            "add_tok": ("max_operand", "train_fraction"),
            "ops_tok": ("max_operand", "max_result", "train_fraction"),
        }[self.kind]
        missing = [f for f in need if getattr(self, f) is None]
        if missing:
            raise ValueError(f"task kind {self.kind!r} needs {missing}")
        if self.answer_order is not None and self.kind != "mul":
            raise ValueError(
                f"task.answer_order is a choice of kind 'mul' only; {self.kind!r} has a fixed order"
            )
        if self.kind == "ops_tok" and self.max_result < 2 * (self.max_operand - 1):
            raise ValueError(
                f"task.max_result {self.max_result} must be at least 2 * (max_operand - 1) = "
                f"{2 * (self.max_operand - 1)}, so that every sum is one token"
            )
        return self


class Architecture(_Strict):
    """GPT-2 hyperparameters (dropout is always 0, attention is eager)."""

    n_layer: int = Field(ge=1)
    n_embd: int = Field(ge=1)
    n_head: int = Field(ge=1)
    n_inner: int | None = None
    activation: Literal["relu", "gelu", "gelu_new"] = "gelu_new"
    tie: bool = True
    n_positions: int = Field(default=32, ge=1)
    #: ``"layernorm"``: GPT-2's LayerNorm. ``"centre"``: LayerNorm made linear, for
    #: recipes of papers whose model has no normalisation (Nanda et al. 2023): epsilon
    #: ``CENTRE_EPS`` and gains initialised to its square root, so each norm computes
    #: ``(x - mean(x)) / sqrt(1 + var(x) / eps)``, i.e. ``x - mean(x)`` to within
    #: ``var / 2 eps`` (about 1e-6 here). It stays a plain HF GPT-2 checkpoint.
    norm: Literal["layernorm", "centre"] = "layernorm"
    #: Standard deviation of the initial weights (GPT-2's ``initializer_range``; None: 0.02).
    init_std: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _divides(self) -> Architecture:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        return self


#: LayerNorm epsilon of ``norm: centre`` architectures (gains start at its square root).
CENTRE_EPS = 1.0e6


class Optimizer(_Strict):
    """AdamW. ``decay_norms=False`` keeps LayerNorm gains/biases out of weight decay."""

    kind: Literal["adamw"] = "adamw"
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    grad_clip: float | None = None
    decay_norms: bool = False


class Schedule(_Strict):
    """Learning-rate multiplier over steps.

    ``warmup_cosine``: linear from ``warmup_start`` to 1 over ``warmup_steps``,
    then cosine down to ``final_fraction``. ``warmup_constant``: linear warm-up
    (from 0 as in Nanda et al.), then constant.
    """

    kind: Literal["warmup_cosine", "warmup_constant"]
    warmup_steps: int = Field(ge=0)
    warmup_start: float = Field(default=0.0, ge=0, le=1)
    final_fraction: float = Field(default=0.0, ge=0, le=1)


class Enrichment(_Strict):
    """Quirke-style enrichment: in ``batch_fraction`` of batches, each digit pair is
    forced to sum to 9 (addition) or to be equal (subtraction: a zero-difference
    column) with probability ``pair_fraction``."""

    batch_fraction: float = Field(ge=0, le=1)
    pair_fraction: float = Field(ge=0, le=1)


class AuxLoss(_Strict):
    """Bai et al.'s auxiliary loss for multiplication: a ``Linear(d, 1, bias=False)``
    head on the attention output of layer ``layer`` regresses the running sum
    ``c^_k`` at the position that predicts answer digit ``k`` (mean squared error on
    ``c^_k / scale``, added to the answer loss with ``weight``). The head is used in
    training only; the shipped model is a plain GPT-2."""

    weight: float = Field(default=1.0, gt=0)
    layer: int = Field(default=-1, description="attention layer the head reads; -1: the last")
    scale: float = Field(default=100.0, gt=0)


class EvalSpec(_Strict):
    """Sizes of evaluation samples. ``every``: steps between progress evaluations."""

    every: int = Field(default=500, ge=1)
    n_periodic: int = Field(default=2000, ge=1)
    n_final: int = Field(default=100_000, ge=1)
    n_per_class: int = Field(default=5000, ge=1)


class EarlyStop(_Strict):
    """Stop once test accuracy >= ``test_accuracy`` and test loss <= ``test_loss``,
    checked at each periodic evaluation after ``min_step``."""

    test_accuracy: float = 1.0
    test_loss: float = Field(gt=0)
    min_step: int = 0


class Recipe(_Strict):
    """Everything that determines a zoo model, given the seed."""

    name: str
    description: str = ""
    task: TaskSpec
    architecture: Architecture
    optimizer: Optimizer
    schedule: Schedule
    steps: int = Field(ge=1)
    batch_size: int | None = Field(default=None, ge=1, description="None: full batch")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    enrichment: Enrichment | None = None
    eval: EvalSpec = EvalSpec()
    checkpoint_every: int = Field(default=1000, ge=1)
    snapshot_every: int | None = Field(
        default=None, ge=1, description="keep weights every N steps to publish phase checkpoints"
    )
    early_stop: EarlyStop | None = None
    aux_loss: AuxLoss | None = None
    loss_float64: bool = Field(default=False, description="cross-entropy in float64")
    lean_forward: bool = Field(
        default=False, description="train with the exact last-position forward (1 layer only)"
    )
    notes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.lean_forward and self.architecture.n_layer != 1:
            raise ValueError("lean_forward is exact only for 1-layer models")
        kind = self.task.kind
        if self.enrichment is not None and kind not in ("add", "sub", "addsub"):
            raise ValueError(
                f"enrichment applies to digit addition and subtraction only, not task kind {kind!r}"
            )
        if self.batch_size is None and kind in ("add", "sub", "addsub", "mul"):
            raise ValueError("tasks with fresh data need a batch_size")
        if self.aux_loss is not None:
            if kind != "mul":
                raise ValueError(
                    f"aux_loss regresses multiplication's running sums c^_k, and task kind "
                    f"{kind!r} has none; use it with kind 'mul' or remove aux_loss"
                )
            n_layer = self.architecture.n_layer
            if not -n_layer <= self.aux_loss.layer < n_layer:
                raise ValueError(
                    f"aux_loss.layer {self.aux_loss.layer} is not a layer of this "
                    f"{n_layer}-layer architecture (valid: {-n_layer}..{n_layer - 1})"
                )
        return self

    def with_overrides(self, *, steps: int | None = None, seed: int | None = None) -> Recipe:
        update = {k: v for k, v in (("steps", steps), ("seed", seed)) if v is not None}
        if not update:
            return self
        try:  # model_copy would skip validation: a negative seed or zero steps would pass
            return type(self).model_validate({**self.model_dump(), **update})
        except ValidationError as exc:
            raise ConfigError(f"recipe {self.name!r} with {update}: {exc}") from None


def recipe_names() -> list[str]:
    """Names of the recipes shipped in ``arithinterp/zoo/recipes``."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load a shipped recipe by name, or a YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"no recipe {str(name_or_path)!r}; shipped recipes: {', '.join(recipe_names())}"
        )
    try:
        return Recipe.model_validate(yaml.safe_load(path.read_bytes().decode("utf-8")))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"recipe {path} is not UTF-8 YAML: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(f"recipe {path} does not validate:\n{exc}") from exc
