"""Training state on disk without pickle: tensors in safetensors, the rest in JSON.

``<out>/_train_state/`` holds ``tensors.safetensors`` (parameters, AdamW
moments and step counters, the torch RNG state) and ``state.json`` (step,
numpy generator state, history, recipe). It is replaced atomically: written
to a sibling temp dir and swapped in, so an interruption leaves either the old
or the new state, never half of one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = ["STATE_DIRNAME", "load_state", "replace_dir", "save_state"]

STATE_DIRNAME = "_train_state"


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written ``tmp`` directory into place at ``final``."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def _named_params(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    # named_parameters() drops tied duplicates, so each tensor is stored once
    return list(model.named_parameters())


def save_state(
    state_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    info: dict[str, Any],
) -> None:
    """Write model, optimizer, RNG states and ``info`` (JSON-able) atomically."""
    tensors: dict[str, torch.Tensor] = {}
    for name, p in _named_params(model):
        tensors[f"param.{name}"] = p.detach().clone().contiguous()
        for key, value in optimizer.state.get(p, {}).items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{name}.{key}"] = t.detach().clone().contiguous().reshape(-1)
    tensors["rng.torch"] = torch.get_rng_state()
    payload = dict(info)
    payload["numpy_rng"] = rng.bit_generator.state
    payload["optim_scalar_shapes"] = {
        f"{name}.{key}": list(v.shape) if torch.is_tensor(v) else None
        for name, p in _named_params(model)
        for key, v in optimizer.state.get(p, {}).items()
    }
    tmp = state_dir.with_name(f".{state_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "tensors.safetensors"))
    (tmp / "state.json").write_text(json.dumps(payload))
    replace_dir(tmp, state_dir)


def load_state(
    state_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Restore what :func:`save_state` wrote; returns the ``info`` dict."""
    payload = json.loads((state_dir / "state.json").read_text())
    tensors = load_file(str(state_dir / "tensors.safetensors"))
    shapes = payload.pop("optim_scalar_shapes")
    with torch.no_grad():
        for name, p in _named_params(model):
            p.copy_(tensors[f"param.{name}"])
            state = {}
            for key_path, shape in shapes.items():
                pname, _, key = key_path.rpartition(".")
                if pname == name:
                    state[key] = tensors[f"optim.{name}.{key}"].reshape(shape)
            if state:
                optimizer.state[p] = state
    torch.set_rng_state(tensors["rng.torch"])
    rng.bit_generator.state = payload.pop("numpy_rng")
    return payload
