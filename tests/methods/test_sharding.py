"""Pair sweeps sharded over an executor equal the serial run bit for bit, without Ray.

Attribution (node and edge) and mediation run their batches of pairs through
:func:`~arithinterp.methods.contrast.map_parts`. Here the same call runs three ways: serially
(``executor=None``), on a :class:`~arithinterp.distributed.LocalExecutor`, and on
``_Copies``, an executor that behaves like a Ray worker without Ray: every batch and the
function that scores it cross a pickle boundary, run on a second copy of the model loaded
from its recipe, and in reverse order. Equal values and equal bootstrap intervals mean the
batches are the same wherever they run, nothing leaks from one batch to the next through the
model, and the merge keeps pair order before the bootstrap. ``tests/distributed/test_ray.py``
runs the same sweeps on a real Ray cluster.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from arithinterp.distributed import Executor, LocalExecutor, ModelRecipe
from arithinterp.methods.attribution import attribution_patch
from arithinterp.methods.edge_attribution import edge_attribution_patch
from arithinterp.methods.mediation import mediate
from arithinterp.models import Model, load_model
from arithinterp.results import Result
from arithinterp.tasks import generate, make_pairs

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

BATCH = 10  # 36 pairs: four batches, the last one short


class _Copies(Executor):
    """Each item on a copy of the model loaded from its recipe (once), pickled both ways, last item first."""

    name = "copies"

    def __init__(self) -> None:
        self.models: dict[ModelRecipe, Model] = {}
        self.items = 0

    @property
    def threads(self) -> int:
        return torch.get_num_threads()

    def map(self, fn: Callable[[Model, Any], Any], items: Sequence[Any], *, model: Model,
            desc: str = "", progress: bool = False) -> list[Any]:
        recipe = ModelRecipe.of(model)
        if recipe not in self.models:
            self.models[recipe] = recipe.load()
        copy = self.models[recipe]
        assert copy is not model
        outputs = []
        for item in reversed(items):
            shipped_fn, shipped_item = pickle.loads(pickle.dumps((fn, item)))
            outputs.append(pickle.loads(pickle.dumps(shipped_fn(copy, shipped_item))))
            self.items += 1
        return outputs[::-1]


@pytest.fixture(scope="module")
def model():
    return load_model("zoo:add-2d")


@pytest.fixture(scope="module")
def pairs(model):
    prompts = generate(model.default_task.model_copy(update={"n": 36, "seed": 3}))
    return make_pairs(prompts, "operand_b", seed=0)


@pytest.fixture(scope="module")
def copies():
    return _Copies()


def assert_identical(a: Result, b: Result) -> None:
    """The same values, extras (the bootstrap intervals among them) and meta, bit for bit."""
    assert a.values.dims == b.values.dims
    assert np.array_equal(a.values.values, b.values.values, equal_nan=True)
    assert set(a.extras) == set(b.extras)
    for name in a.extras:
        assert np.array_equal(a.extras[name].values, b.extras[name].values, equal_nan=True), name
    assert a.meta.options == b.meta.options
    assert a.meta.extra == b.meta.extra


def _three_ways(run: Callable[..., Result], copies: _Copies) -> Result:
    serial = run(executor=None)
    before = copies.items
    for executor in (LocalExecutor(), copies):
        assert_identical(serial, run(executor=executor))
    assert copies.items - before == 4  # one item per batch of pairs
    return serial


@pytest.mark.parametrize(("method", "freeze_norm", "kind"), [
    ("atp", False, "attn_head"),
    ("atp", True, "mlp_post"),
    ("ig_activations", True, "attn_head"),
    ("ig_activations", False, "resid_pre"),
    ("atp_star", False, "k"),
])
def test_attribution_sharded_equals_serial(model, pairs, copies, method, freeze_norm, kind):
    def run(executor):
        return attribution_patch(model, pairs, kind=kind, method=method, freeze_norm=freeze_norm, ig_steps=3,
                                 batch_size=BATCH, n_boot=200, progress=False, executor=executor)

    serial = _three_ways(run, copies)
    assert np.abs(serial.effect.values).max() > 0
    assert serial.extras["ci_low"].values.min() < serial.extras["ci_high"].values.max()
    assert ("graddrop" in serial.extras) == (method == "atp_star")


def test_attribution_positions_subset_sharded_equals_serial(model, pairs, copies):
    def run(executor):
        return attribution_patch(model, pairs, kind="attn_head", positions=[-1, -2], method="atp",
                                 batch_size=BATCH, n_boot=100, progress=False, executor=executor)

    assert _three_ways(run, copies).sizes["pos"] == 2


def test_edge_attribution_sharded_equals_serial(model, pairs, copies):
    def run(executor):
        return edge_attribution_patch(model, pairs, receivers=("attn_in", "q", "mlp_in", "logits"),
                                      freeze_norm=True, batch_size=BATCH, n_boot=200, progress=False,
                                      executor=executor)

    serial = _three_ways(run, copies)
    assert np.nanmax(np.abs(serial.values.values)) > 0


@pytest.mark.parametrize("options", [{}, {"heads": True, "per_position": False}])
def test_mediation_sharded_equals_serial(model, pairs, copies, options):
    def run(executor):
        return mediate(model, pairs, batch_size=BATCH, n_boot=200, progress=False, executor=executor, **options)

    serial = _three_ways(run, copies)
    assert np.abs(serial.values.values).max() > 0
    assert serial.meta.extra["total_effect_ci_low"] <= serial.total_effect <= serial.meta.extra["total_effect_ci_high"]


@pytest.mark.parametrize("kind", ["patching", "attribution", "edge_attribution", "mediation", "probes", "report"])
def test_pipeline_steps_of_pair_sweeps_shard_themselves(kind):
    from arithinterp.pipeline.executors import shards_itself

    # with --executor ray these steps run here and spread their batches over the workers
    assert shards_itself(SimpleNamespace(kind=kind))


def test_report_views_shard_their_sweeps(model, copies):
    """The report's patching, attribution, mediation, probe and circuit-edge views pass the
    report's executor on: the sharded report equals the local one, result by result."""
    from arithinterp.reports import build_report

    def run(executor):
        return build_report(model, None, n=24, methods=["patching", "attribution", "mediation", "probes", "circuit"],
                            seed=1, progress=False, executor=executor)

    serial = run(None)
    before = copies.items
    sharded = run(copies)
    assert copies.items > before
    assert set(serial.results) == set(sharded.results)
    for name, result in serial.results.items():
        if isinstance(result, Result):
            assert_identical(result, sharded.results[name])
    pd.testing.assert_frame_equal(serial.heads, sharded.heads)
