"""Operand maps: the classifier recovers planted features; the maps equal the grid activations."""

from __future__ import annotations

import numpy as np
import pytest

from arithinterp.errors import MethodError
from arithinterp.methods import OperandMapResult, classify_operand_map, operand_maps
from arithinterp.methods.grid import grid_activations
from arithinterp.models import Site, load_model
from arithinterp.tasks import TaskSpec

A = B = np.arange(100)
GA, GB = np.meshgrid(A, B, indexing="ij")
SUM = GA + GB


def classify(feature: np.ndarray, *, noise: float = 0.0, result=SUM, operation="add") -> dict:
    rng = np.random.default_rng(0)
    return classify_operand_map(feature + noise * rng.normal(size=feature.shape), A, B, result, operation=operation)


@pytest.mark.parametrize(("feature", "kind", "description"), [
    ((GA % 10 == 6), "operand", "a ends in 6"),
    ((GB % 10 == 3), "operand", "b ends in 3"),
    ((GA // 10 == 7), "operand", "a in 70–79"),
    ((GA % 10 == 6) & (GB % 10 == 9), "lookup", "_6 + _9"),
    ((np.abs(SUM - 95) <= 2), "result", "sum ≈ 95 (93–97)"),
    ((SUM == 120), "result", "sum = 120"),
    ((SUM % 10 == 5), "result", "sum ends in 5"),
])
@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_planted_features_are_classified(feature, kind, description, noise):
    got = classify(feature.astype(float), noise=noise)
    assert (got["kind"], got["description"], got["sign"]) == (kind, description, 1)
    assert got["score"] > (0.99 if noise == 0 else 0.3)  # sparse patterns lose correlation to noise


def test_a_feature_silent_on_the_pattern_has_negative_sign():
    got = classify(1.0 - (GA % 10 == 6))
    assert (got["kind"], got["description"], got["sign"]) == ("operand", "a ends in 6", -1)


def test_noise_and_constants_are_unclassified():
    assert classify(np.zeros((100, 100)))["kind"] == "unclassified"
    got = classify(np.random.default_rng(1).normal(size=(100, 100)))
    assert got["kind"] == "unclassified" and got["score"] < 0.3


def test_a_lookup_feature_is_not_mistaken_for_its_operand_or_result_digit():
    # _6 + _9 is inside "a ends in 6" and "sum ends in 5": both correlate (~0.3), the lookup wins.
    lookup = ((GA % 10 == 6) & (GB % 10 == 9)).astype(float)
    assert classify(lookup)["kind"] == "lookup"
    # Other operations name their result and operator.
    prod = GA * GB
    got = classify((prod % 10 == 4).astype(float), result=prod, operation="mul")
    assert got["description"] == "product ends in 4"
    got = classify(((GA % 10 == 2) & (GB % 10 == 7)).astype(float), result=prod, operation="mul")
    assert got["description"] == "_2 * _7"


def test_maps_equal_the_grid_activations_and_a_direction_projects(tiny_hf_dirs):
    model = load_model(str(tiny_hf_dirs["gpt2"]))
    spec = TaskSpec(operation="add", operand_range=(0, 9), format="plain")
    direction = np.random.default_rng(0).normal(size=model.shape.d_model)
    res = operand_maps(model, spec, features=["L1N5", "L0H1", "L1 mid"], directions={"L1 mid": direction})
    assert isinstance(res, OperandMapResult) and res.dims == ("component", "prompt")
    acts = grid_activations(model, spec, [Site("mlp_post", 1, neuron=5, pos=-1), Site("resid_mid", 1, pos=-1),
                                          Site("attn_head", 0, head=1, pos=-1)], heads="write")
    z, a, b = res.grid("L1N5")
    assert list(a) == list(range(10)) and list(b) == list(range(10))
    np.testing.assert_allclose(z, acts[Site("mlp_post", 1, neuron=5, pos=-1)].numpy(), rtol=1e-6)
    mid, _, _ = res.grid("L1 mid")
    np.testing.assert_allclose(mid, acts[Site("resid_mid", 1, pos=-1)].numpy() @ direction, rtol=1e-6)
    # A head's write (a vector) is reduced to its first principal component over the grid.
    write = acts[Site("attn_head", 0, head=1, pos=-1)].numpy().reshape(100, -1)
    centred = write - write.mean(0)
    pc1 = np.linalg.svd(centred, full_matrices=False)[2][0]
    head, _, _ = res.grid("L0H1")
    assert abs(np.corrcoef(head.ravel(), centred @ pc1)[0, 1]) == pytest.approx(1.0, abs=1e-6)
    reductions = dict(zip(res.values.coords["component"].values, res.values.coords["reduction"].values))
    assert reductions == {"L1N5": "neuron", "L0H1": "pc1", "L1 mid": "direction"}
    assert set(res.classes()) == {"L1N5", "L0H1", "L1 mid"}
    fig = res.figure("L1N5")
    assert fig.data[0].z.shape == (10, 10) and "L1N5" in fig.layout.title.text


def test_large_domains_use_a_window_and_bad_input_raises(tiny_hf_dirs):
    model = load_model(str(tiny_hf_dirs["gpt2"]))
    with pytest.raises(MethodError, match="directions"):
        operand_maps(model, TaskSpec(operation="add", operand_range=(0, 9), format="plain"),
                     features=["L0H0"], directions={"L0H1": np.zeros(4)})
    with pytest.raises(MethodError, match="features is empty"):
        operand_maps(model, TaskSpec(operation="add", operand_range=(0, 9), format="plain"), features=[])
    res = operand_maps(model, TaskSpec(operation="add", digits=3, format="fixed"), features=["L0N0"])
    assert res.meta.options["window"] is True and res.meta.options["operand_range"] == [100, 199]
    assert res.sizes["prompt"] == 100 * 100


def test_cells_outside_the_task_are_masked(tiny_hf_dirs, monkeypatch):
    """On a subtraction task without negatives the cells with a < b are NaN and do not decide the
    class: a feature that is `a ends in 6` on the problems, and `b ends in 3` (ten times larger)
    where a < b, is `a ends in 6`; a head's principal component is taken over the problems only."""
    import sys

    import torch

    om = sys.modules["arithinterp.methods.operand_maps"]  # the package attribute is the function

    model = load_model(str(tiny_hf_dirs["gpt2"]))
    spec = TaskSpec(operation="sub", operand_range=(0, 99), format="plain", allow_negative=False)
    invalid = GA < GB
    neuron = np.where(invalid, 10.0 * (GB % 10 == 3), (GA % 10 == 6).astype(float))
    write = np.zeros((100, 100, model.shape.d_model))
    write[..., 0] = np.where(invalid, 0.0, GA % 10 == 6)  # the problems vary along dimension 0
    write[..., 1] = np.where(invalid, 10.0 * (GB % 10 == 3), 0.0)  # the rest, far more, along 1

    def fake(model, grid, sites, **kwargs):
        return {s: torch.tensor(neuron if s.kind == "mlp_post" else write) for s in sites}

    monkeypatch.setattr(om, "grid_activations", fake)
    res = operand_maps(model, spec, features=["L1N5", "L0H1"])
    assert res.meta.options["masked_cells"] == int(invalid.sum()) == 4950
    for feature in ("L1N5", "L0H1"):
        z, _, _ = res.grid(feature)
        assert np.isnan(z[invalid]).all() and np.isfinite(z[~invalid]).all()
        c = res.classes()[feature]
        assert (c["kind"], c["description"]) == ("operand", "a ends in 6") and c["score"] > 0.99
    np.testing.assert_allclose(res.grid("L1N5")[0][~invalid], neuron[~invalid])
    # Unmasked (an addition grid has no invalid cells) the large pattern would win.
    assert classify(neuron)["description"] == "b ends in 3"
