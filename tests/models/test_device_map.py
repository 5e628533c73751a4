"""``device_map`` passes a Hugging Face device map to either backend (multi-GPU placement via
accelerate). On this CPU-only machine the map puts everything on the CPU, and the model must
then give exactly the logits of the default load; contradictory placements fail early."""

from __future__ import annotations

import pytest
import torch

from arithinterp import load_model
from arithinterp.errors import ModelLoadError


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_a_device_map_loads_the_same_model(tiny_hf_dirs, backend) -> None:
    path = str(tiny_hf_dirs["gpt2"])
    plain = load_model(path, backend=backend)
    tokens = plain.to_tokens(["12+34=46", "99+99=98"])
    for device_map in ("cpu", {"": "cpu"}):
        mapped = load_model(path, backend=backend, device_map=device_map)
        assert mapped.backend.device == torch.device("cpu")
        assert torch.equal(mapped.logits(tokens), plain.logits(tokens))


def test_contradictory_placements_fail_before_loading(tiny_hf_dirs) -> None:
    path = str(tiny_hf_dirs["gpt2"])
    with pytest.raises(ModelLoadError, match="either device= or device_map="):
        load_model(path, device="cuda", device_map="auto")
    with pytest.raises(ModelLoadError, match="NDIF places the model itself"):
        load_model(path, backend="nnsight", remote=True, device_map="auto")
    with pytest.raises(ModelLoadError, match="config dict"):
        load_model({"d_model": 8}, device_map="auto")
