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

import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import torch

from arithinterp.errors import ModelLoadError
from arithinterp.models.model import Model
from arithinterp.models.site import ModelShape
from arithinterp.progress_bars import hf_progress

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


#: The weight files a model directory must have (one of them): safetensors only, never a pickle.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
#: Files from which transformers builds a tokenizer (one of them must be present).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
#: Config sizes that must be positive integers where the config has them.
_POSITIVE_SIZES = ("n_layer", "num_hidden_layers", "n_head", "num_attention_heads", "n_embd",
                   "hidden_size", "vocab_size", "n_positions", "max_position_embeddings",
                   "n_inner", "intermediate_size", "num_key_value_heads", "head_dim")


def _check_hf_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json; it is not a Hugging Face model directory")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        pickled = [p.name for p in path.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".ckpt"}]
        other = sorted(p.name for p in path.glob("*.safetensors"))
        hint = (
            f" It has pickled weights ({', '.join(pickled)}), which arithinterp never loads; "
            "convert them once with transformers' save_pretrained(safe_serialization=True)."
            if pickled
            else ""
        )
        if other:
            hint += f" Other safetensors files ({', '.join(other)}) are not the model's weights."
        raise ModelLoadError(f"{path} has no model.safetensors (or its index).{hint}")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{path} has no tokenizer ({' / '.join(TOKENIZER_FILES)}); save the tokenizer beside "
            "the weights with tokenizer.save_pretrained(directory)"
        )
    _check_config_sizes(path / "config.json")


def _check_config_sizes(config_file: Path) -> None:
    """Refuse a config whose sizes are not positive integers (``n_layer: -1`` would load a
    model with no layers)."""
    try:
        config = json.loads(config_file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{config_file} is not valid UTF-8 JSON: {err}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_file} must hold a JSON object")
    for key in _POSITIVE_SIZES:
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelLoadError(f"{config_file}: {key} must be a positive integer, got {value!r}")


#: Sizes of a TransformerLens-native config that must be positive integers where given.
_NATIVE_SIZES = ("n_layers", "d_model", "n_ctx", "d_head", "n_heads", "d_vocab", "d_mlp", "n_key_value_heads")


def _check_native_config(config: Mapping[str, Any]) -> None:
    bad = {k: config[k] for k in _NATIVE_SIZES
           if config.get(k) is not None
           and (isinstance(config[k], bool) or not isinstance(config[k], int) or config[k] < 1)}
    if bad:
        raise ModelLoadError(f"config dict sizes must be positive integers; got {bad}")


def check_shape(shape: ModelShape, name: str) -> None:
    """Refuse a loaded model without layers, heads, width, vocabulary or context."""
    sizes = {"n_layers": shape.n_layers, "n_heads": shape.n_heads, "d_model": shape.d_model,
             "d_vocab": shape.d_vocab, "n_ctx": shape.n_ctx}
    bad = {k: v for k, v in sizes.items() if v < 1}
    if bad:
        raise ModelLoadError(f"{name} is not a usable model: {bad}; every size must be at least 1")


def _check_hub(name: str) -> None:
    """Fail fast for a hub name that cannot load: offline and not cached, or the hub
    unreachable (instead of a minute of retries)."""
    local = ("a zoo name (zoo:add-5d) or a local directory saved with save_pretrained "
             "(config.json, model.safetensors, tokenizer)")
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # a name the hub's rules refuse ("a b", "x//y"): not a hub name
        raise ModelLoadError(f"{name!r} is neither a local directory nor a hub name; give {local}") from None
    if cached:
        return
    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(
            f"{name!r} is not a local directory and the hub is offline (HF_HUB_OFFLINE is set) "
            f"with no cached copy; give {local}"
        )
    if not _reachable(constants.ENDPOINT):
        raise ModelLoadError(
            f"{name!r} is not a local directory and the hub ({constants.ENDPOINT}) is unreachable; "
            f"give {local}, or set HF_ENDPOINT to a reachable mirror"
        )


def _reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` (behind a proxy the
    direct probe says nothing, so the hub is assumed reachable)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


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
    if not isinstance(spec, (str, Mapping)):
        raise ModelLoadError(
            f"a model spec is a str ('zoo:<name>', a local directory, a hub name) or a config "
            f"dict, got {type(spec).__name__} {spec!r:.60}"
        )
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

        _check_native_config(spec)
        b = TransformerLensBackend.from_config(spec, tokenizer=tokenizer, device=device, dtype=torch_dtype)
        return _checked(Model(b, name=str(spec.get("model_name", "native")), spec="<config>"))
    path, name = resolve_spec(spec)
    if path == spec and not remote and not Path(path).exists():
        _check_hub(spec)
    # In a log file, transformers' "Loading weights" bars become lines (silent unless slow).
    with hf_progress():
        if backend == "transformer_lens":
            from arithinterp.models.backends.tl import TransformerLensBackend

            loaded = TransformerLensBackend.from_pretrained(
                path, device=device, dtype=torch_dtype, device_map=_plain(device_map)
            )
        else:
            from arithinterp.models.backends.nnsight_backend import NNsightBackend

            loaded = NNsightBackend.from_pretrained(
                path, device=device, dtype=torch_dtype, remote=remote, device_map=_plain(device_map)
            )
    return _checked(Model(loaded, name=name, spec=spec, default_tasks=_card_tasks(path)))


def _card_tasks(path: str) -> tuple:
    """The default tasks in a local model directory's zoo card (none for a hub name)."""
    if not Path(path).is_dir():
        return ()
    from arithinterp.zoo.default_tasks import model_dir_tasks

    return model_dir_tasks(path)


def _checked(model: Model) -> Model:
    check_shape(model.shape, model.name)
    return model
