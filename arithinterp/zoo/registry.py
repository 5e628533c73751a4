"""Where the shipped zoo models live and how to find them by name."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arithinterp.errors import ModelLoadError

__all__ = ["ZOO_DIR", "ZooEntry", "list_checkpoints", "list_zoo", "load_checkpoint_dir", "zoo_path"]

ZOO_DIR = Path(__file__).parent / "models"


@dataclass(frozen=True)
class ZooEntry:
    """A shipped model: its name, directory and headline accuracy from ``card.json``."""

    name: str
    path: Path
    task: str
    headline_metric: str
    headline: float
    metrics: dict[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return f"ZooEntry({self.name!r}, task={self.task!r}, {self.headline_metric}={self.headline:.4%})"


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def _names() -> list[str]:
    if not ZOO_DIR.is_dir():
        return []
    return sorted(
        p.name for p in ZOO_DIR.iterdir() if _is_model_dir(p) and (p / "card.json").is_file()
    )


def list_zoo() -> list[ZooEntry]:
    """All shipped models, sorted by name."""
    entries = []
    for name in _names():
        path = ZOO_DIR / name
        card = json.loads((path / "card.json").read_text())
        head = card["headline"]
        entries.append(
            ZooEntry(
                name, path, card["task"], head["metric"], float(head["value"]), card["metrics"]
            )
        )
    return entries


def zoo_path(name: str) -> Path:
    """Directory of a shipped model; an unknown name lists the available ones."""
    path = ZOO_DIR / name
    if name and "/" not in name and _is_model_dir(path):
        return path
    available = ", ".join(_names()) or "(none shipped yet)"
    raise ModelLoadError(f"no zoo model {name!r}; available: {available}")


def list_checkpoints(name: str) -> list[int]:
    """Training steps with a saved checkpoint for a zoo model (empty if none)."""
    root = zoo_path(name) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(
        int(p.name.removeprefix("step-")) for p in root.glob("step-*") if _is_model_dir(p)
    )


def load_checkpoint_dir(name: str, step: int) -> Path:
    """HF directory of the checkpoint saved at ``step`` (e.g. for ``modadd-113``).

    Load it like any zoo model, e.g.
    ``GPT2LMHeadModel.from_pretrained(path, use_safetensors=True)``; its
    ``metrics.json`` holds train/test loss and accuracy at that step.
    """
    steps = list_checkpoints(name)
    if step not in steps:
        raise ModelLoadError(
            f"zoo model {name!r} has no checkpoint at step {step}; available steps: "
            f"{', '.join(map(str, steps)) or '(none)'}"
        )
    return zoo_path(name) / "checkpoints" / f"step-{step}"
