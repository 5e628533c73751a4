"""Resolve a model spec and load it on a backend.

A spec is one of:

- ``"zoo:<name>"``: a model shipped inside the package (see ``arithinterp zoo list``);
- a local Hugging Face directory (``config.json`` + safetensors weights + tokenizer);
- a hub name such as ``"gpt2"``, which loads only where a hub (or its local
  cache) is reachable, and otherwise fails with :class:`ModelLoadError`;
- a dict: a TransformerLens-native config for a randomly initialised model
  (``TransformerBridge.boot_native``; transformer_lens backend only).

Weights are loaded only from safetensors; pickled checkpoints are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from arithinterp.errors import ModelLoadError
from arithinterp.models.model import Model

BackendName = Literal["transformer_lens", "nnsight"]
BACKENDS: tuple[str, ...] = get_args(BackendName)

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def resolve_spec(spec: str) -> tuple[str, str]:
    """Return ``(path_or_hub_name, display_name)`` for a string spec."""
    if spec.startswith("zoo:"):
        from arithinterp.zoo.registry import zoo_path

        name = spec[len("zoo:") :]
        return str(zoo_path(name)), spec
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{spec!r} is a file; a model is a directory with config.json")
        _check_hf_dir(path)
        return str(path.resolve()), path.name
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelLoadError(
            f"no model directory at {spec!r}; give a zoo name (zoo:add-5d), an existing "
            "Hugging Face directory, or a hub name"
        )
    return spec, spec


def _check_hf_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json; it is not a Hugging Face model directory")
    has_safetensors = any(path.glob("*.safetensors"))
    if not has_safetensors:
        pickled = [p.name for p in path.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".ckpt"}]
        hint = (
            f" It has pickled weights ({', '.join(pickled)}), which arithinterp never loads; "
            "convert them once with transformers' save_pretrained(safe_serialization=True)."
            if pickled
            else ""
        )
        raise ModelLoadError(f"{path} has no *.safetensors weights.{hint}")


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; valid: {', '.join(_DTYPES)}") from None


def _plain(device_map: str | Mapping[str, Any] | None) -> str | dict[str, Any] | None:
    return dict(device_map) if isinstance(device_map, Mapping) else device_map


def load_model(
    spec: str | Mapping[str, Any],
    backend: BackendName = "transformer_lens",
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    remote: bool | Literal["local"] = False,
    tokenizer: Any = None,
    device_map: str | Mapping[str, Any] | None = None,
) -> Model:
    """Load a model for analysis.

    Args:
        spec: ``"zoo:<name>"``, a local HF directory, a hub name, or a TL-native config dict.
        backend: ``"transformer_lens"`` (TransformerBridge) or ``"nnsight"`` (LanguageModel).
        device: torch device.
        dtype: parameter dtype.
        remote: nnsight only: run on NDIF (``remote=True``) instead of locally;
            ``"local"`` serializes each request as for NDIF and runs it here (nnsight's dry run).
        tokenizer: for a config dict, the tokenizer to attach.
        device_map: a Hugging Face device map (``"auto"``, ``"balanced"``, or a dict of
            module name to device) that splits the model across several devices through
            accelerate, in place of ``device``. Activations are read and patched where each
            layer lives; results come back on the first device.
    """
    if backend not in BACKENDS:
        raise ModelLoadError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    torch_dtype = parse_dtype(dtype)
    if remote and backend != "nnsight":
        raise ModelLoadError("remote=True runs on NDIF and needs backend='nnsight'")
    if device_map is not None and (isinstance(spec, Mapping) or remote):
        raise ModelLoadError(
            "device_map places a Hugging Face checkpoint loaded here; it does not apply to a "
            "config dict or to remote=True (NDIF places the model itself)"
        )
    if device_map is not None and str(device) != "cpu":
        raise ModelLoadError("pass either device= or device_map=, not both")
    if isinstance(spec, Mapping):
        if backend != "transformer_lens":
            raise ModelLoadError(
                "a config dict builds a TransformerLens-native model; use "
                "backend='transformer_lens', or save an HF directory for nnsight"
            )
        from arithinterp.models.backends.tl import TransformerLensBackend

        b = TransformerLensBackend.from_config(spec, tokenizer=tokenizer, device=device, dtype=torch_dtype)
        return Model(b, name=str(spec.get("model_name", "native")), spec="<config>")
    path, name = resolve_spec(spec)
    if backend == "transformer_lens":
        from arithinterp.models.backends.tl import TransformerLensBackend

        return Model(
            TransformerLensBackend.from_pretrained(
                path, device=device, dtype=torch_dtype, device_map=_plain(device_map)
            ),
            name=name,
            spec=spec,
        )
    from arithinterp.models.backends.nnsight_backend import NNsightBackend

    return Model(
        NNsightBackend.from_pretrained(
            path, device=device, dtype=torch_dtype, remote=remote, device_map=_plain(device_map)
        ),
        name=name,
        spec=spec,
    )
