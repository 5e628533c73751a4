"""The planted-circuit suite: each model with its task, its pairs and its ground truth.

:func:`planted` builds a model's GPT-2 directory once (hand-set weights, safetensors) in
a cache directory, loads it on either backend and returns a :class:`Planted`: the
:class:`~arithinterp.models.Model`, the prompts and clean/corrupt pairs it is meant for,
and the truth: the circuit's component labels (:attr:`Site.label`), the role of every
component that has one, and a description.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from arithinterp.errors import ConfigError
from arithinterp.methods.circuits import CircuitResult, discover_circuit
from arithinterp.models import Model, Site, load_model
from arithinterp.models.loading import BackendName
from arithinterp.planted import and_model, models, weights
from arithinterp.results.io import atomic_dir
from arithinterp.tasks import PromptPairs, PromptSet, TaskSpec, generate, make_pairs, tokenize

__all__ = ["PLANTED", "Planted", "PlantedSpec", "Role", "component_labels", "planted", "planted_spec"]

Role = Literal["member", "backup", "negative", "decoy"]
"""``member``: needed as planted; ``backup``: a member another member can stand in for;
``negative``: a member that lowers the answer's logit; ``decoy``: not a member, built to look
like one (same attention, or firing on the operands) while nothing reads what it writes."""

Plants = Literal["and", "decoy", "backup", "negative", "composition", "lookup"]


@dataclass(frozen=True)
class PlantedSpec:
    """A planted model: how to build it, what it is asked, and its truth."""

    name: str
    description: str
    plants: tuple[Plants, ...]
    build: Callable[[Path], Path]
    task: Mapping[str, Any]
    roles: Mapping[str, Role]
    components: tuple[str, ...] = ("attn_head", "mlp_out")
    answer: Literal["single", "multi"] = "single"
    pairs: str = "random"
    #: Faithfulness metric and target of discovery: these circuits are exact, so the target is
    #: near 1, and ``logit_diff`` (correct logit − largest other) sees a tie as a loss, where a
    #: correct / max ratio would score it as right.
    metric: str = "logit_diff"
    target: float = 0.99

    @property
    def truth(self) -> frozenset[str]:
        """The circuit: every component whose role is not ``decoy``."""
        return frozenset(k for k, r in self.roles.items() if r != "decoy")


@dataclass(frozen=True)
class Planted:
    """A loaded planted model with its prompts, pairs and truth (see :class:`PlantedSpec`)."""

    spec: PlantedSpec
    model: Model
    prompts: PromptSet
    pairs: PromptPairs
    path: Path = field(repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def truth(self) -> frozenset[str]:
        return self.spec.truth

    @property
    def roles(self) -> Mapping[str, Role]:
        return self.spec.roles

    @property
    def description(self) -> str:
        return self.spec.description

    @property
    def components(self) -> tuple[str, ...]:
        return self.spec.components

    @property
    def answer(self) -> str:
        return self.spec.answer

    @property
    def labels(self) -> list[str]:
        """Every component of the model that discovery ranks, in layer order."""
        return component_labels(self.model, self.components)

    def tokens(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The prompt tokens the model reads (teacher-forced for a multi-token answer), the
        answer ids ``[prompt, answer token]`` and the positions they are scored at."""
        tok = tokenize(self.prompts, self.model.tokenizer, answer=self.answer)
        seqs = tok.prompt_tokens if self.answer == "single" else tok.tokens[:, :-1]
        return seqs, tok.answer_tokens, torch.as_tensor(tok.answer_positions)

    def discover(self, **options: Any) -> CircuitResult:
        """:func:`~arithinterp.methods.circuits.discover_circuit` on this model's pairs and prompts,
        with its components, answer mode, metric and target (``options`` override them)."""
        kw = {"components": self.components, "answer": self.answer, "metric": self.spec.metric,
              "target": self.spec.target, "progress": False, **options}
        return discover_circuit(self.model, self.pairs, self.prompts, **kw)

    @property
    def sites(self) -> list[Site]:
        """The truth as sites, in layer order."""
        return [Site.from_label(label) for label in self.labels if label in self.truth]


def component_labels(model: Model, components: tuple[str, ...]) -> list[str]:
    """Labels of every head (``attn_head``), MLP (``mlp_out``) or neuron (``mlp_post``), by layer."""
    shape, out = model.shape, []
    for layer in range(shape.n_layers):
        if "attn_head" in components:
            out += [Site("attn_head", layer, head=h).label for h in range(shape.n_heads)]
        if "mlp_out" in components:
            out.append(Site("mlp_out", layer).label)
        if "mlp_post" in components:
            out += [Site("mlp_post", layer, neuron=n).label for n in range(shape.d_mlp)]
    return out


_SINGLE = {"operation": "add", "operand_range": (0, 9), "format": "plain", "n": 100, "seed": 0}
_LOOKUP_ROLES: dict[str, Role] = {"L0H0": "member", "L0H1": "member"}
_LOOKUP_ROLES.update({f"L0N{n}": "member" for n in range(models.LOOKUP_N**2)})
_LOOKUP_ROLES.update({f"L0N{n}": "decoy" for n in models.LOOKUP_DECOYS})

_SPECS = (
    PlantedSpec(
        name="and", plants=("and", "decoy"), build=and_model.build_and_model,
        task={"operation": "add", "digits": 1, "format": "fixed", "n": 40, "seed": 3}, answer="multi",
        roles={"L0H0": "member", "L0H1": "member", "MLP0": "member", "L0H2": "decoy", "L0H3": "decoy"},
        description="One layer, two-token answer (tens, units). L0H0 copies a, L0H1 copies b, MLP0 looks up "
                    "the sum (a carry neuron writes the tens digit): the answer needs all three together. "
                    "L0H2 / L0H3 attend to '+' / '=' (the same token in every prompt) and write dims nothing "
                    "reads.",
    ),
    PlantedSpec(
        name="decoy", plants=("and", "decoy"), build=models.build_decoy, task=_SINGLE,
        roles={"L0H0": "member", "L0H1": "member", "MLP0": "member", "L0H2": "decoy", "L0H3": "decoy"},
        description="One layer, one-token answer. As the AND model, but the decoys L0H2 / L0H3 attend exactly "
                    "as L0H0 / L0H1 do and copy the same operands, into dims nothing reads: their output "
                    "changes with the prompt and has no effect (under resampling; a mean or zero ablation "
                    "changes the residual norm, so LayerNorm gives them a small effect).",
    ),
    PlantedSpec(
        name="backup", plants=("backup",), build=models.build_backup, task=_SINGLE,
        roles={"L0H0": "backup", "L0H1": "backup", "L0H2": "member", "MLP0": "member", "L0H3": "decoy"},
        description="One layer, one-token answer. L0H0 and L0H1 both copy a; the lookup MLP saturates on one "
                    "copy, so ablating either head (mean or zero) leaves the answer exactly as it was and "
                    "only ablating both loses it. L0H2 copies b; the decoy L0H3 copies b into dims nothing "
                    "reads.",
    ),
    PlantedSpec(
        name="negative", plants=("negative", "composition", "decoy"), build=models.build_negative,
        task=_SINGLE,
        roles={"L0H0": "member", "L0H1": "member", "MLP0": "member", "L1H0": "negative", "L0H2": "decoy"},
        description="Two layers, one-token answer. Layer 0 adds (L0H0 copies a, L0H1 copies b, MLP0 looks "
                    "up); the negative head L1H0 reads the answer MLP0 wrote and writes half of it back "
                    "negated, lowering the answer's logit. L0H2 is a decoy copy of a.",
    ),
    PlantedSpec(
        name="compose", plants=("composition", "decoy"), build=models.build_compose, task=_SINGLE,
        roles={"L0H0": "member", "L1H0": "member", "L1H1": "member", "MLP1": "member", "L0H1": "decoy"},
        description="Two layers, one-token answer. L0H0 moves a to the '+' position; L1H0 reads it there "
                    "(composition) and brings it to the answer position; L1H1 copies b; MLP1 looks up the "
                    "sum. L0H0 has no direct effect on the logits. The decoy L0H1 attends as L0H0 does and "
                    "writes dims nothing reads.",
    ),
    PlantedSpec(
        name="lookup", plants=("lookup", "decoy"), build=models.build_lookup, components=("attn_head", "mlp_post"),
        task={**_SINGLE, "operand_range": (0, models.LOOKUP_N - 1)}, roles=_LOOKUP_ROLES,
        description=f"One layer, neuron level, operands 0..{models.LOOKUP_N - 1}. L0H0 / L0H1 copy a / b; "
                    f"neuron {models.LOOKUP_N}a + b of MLP0 (0..{models.LOOKUP_N**2 - 1}) fires only for "
                    "its pair and writes the sum: a lookup table. Neurons "
                    f"{models.LOOKUP_DECOYS.start}..{models.LOOKUP_DECOYS.stop - 1} fire on a alone and write "
                    "dims nothing reads (decoys; one fires per prompt, so resampling one alone moves the "
                    "residual norm and LayerNorm rescales the logits by about 1%); the other neurons are "
                    "dead.",
    ),
)

_BY_NAME = {s.name: s for s in _SPECS}
#: The names of the planted models.
PLANTED: tuple[str, ...] = tuple(_BY_NAME)


def planted_spec(name: str) -> PlantedSpec:
    if name not in _BY_NAME:
        raise ConfigError(f"unknown planted model {name!r}; valid: {', '.join(PLANTED)}")
    return _BY_NAME[name]


def _source_hash() -> str:
    """A hash of the builders' source: a cache directory is rebuilt when the weights change."""
    digest = hashlib.sha256()
    for module in (weights, models, and_model):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:12]


def build_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """The model's GPT-2 directory, built on first use under ``cache_dir`` (default:
    ``arithinterp-planted-<uid>`` in the system temp dir) and reused while the builders' source is
    unchanged."""
    spec = planted_spec(name)
    user = f"-{os.getuid()}" if hasattr(os, "getuid") else ""  # the temp dir may be shared between users
    root = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / f"arithinterp-planted{user}"
    path = root / f"{name}-{_source_hash()}"
    if not (path / "model.safetensors").exists():
        with atomic_dir(path) as tmp:
            spec.build(tmp)
    return path


def planted(name: str, backend: BackendName = "transformer_lens", *, cache_dir: str | Path | None = None,
            n: int | None = None, seed: int | None = None) -> Planted:
    """Load planted model ``name`` (one of :data:`PLANTED`) with its prompts, pairs and truth.

    Args:
        name: the model.
        backend: ``"transformer_lens"`` or ``"nnsight"``.
        cache_dir: where the built directory is kept (default: the system temp dir).
        n: override the task's prompt count.
        seed: override the task's seed.
    """
    spec = planted_spec(name)
    path = build_dir(name, cache_dir)
    task = dict(spec.task)
    if n is not None:
        task["n"] = n
    if seed is not None:
        task["seed"] = seed
    prompts = generate(TaskSpec(**task))
    return Planted(spec=spec, model=load_model(str(path), backend), prompts=prompts,
                   pairs=make_pairs(prompts, spec.pairs), path=path)
