"""GPU readiness, checked on the CPU: the engines' loops over sites make no host round-trips.

On a GPU, ``.item()``, ``bool(tensor)``, ``.tolist()``, boolean-mask indexing (``nonzero``)
and ``.cpu()`` / ``.numpy()`` each wait for the device. A
:class:`~torch.utils._python_dispatch.TorchDispatchMode` sees the aten ops behind the first
four on any device, and wrapping ``Tensor.cpu`` / ``Tensor.numpy`` counts the copies. A
sweep of 6 heads and one of 1,024 neurons (per position: 6,144 cells) over the same batch must
make the same number of them: anything inside the loop over sites would multiply. Two batches
may cost at most twice one batch. Both backends are checked.

The libraries' own forward passes read a few values back per call (Hugging Face's GPT-2 checks
its input for padding and packed sequences; nnsight's batcher sizes each trace's inputs): those
are per forward pass whatever the caller does, and are not counted here.
"""

from __future__ import annotations

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from arithinterp.methods import patch_activations
from arithinterp.methods.attribution import attribution_patch
from arithinterp.methods.edge_attribution import edge_attribution_patch
from arithinterp.methods.mediation import mediate
from arithinterp.models import load_model
from arithinterp.tasks import generate, make_pairs

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

_SYNC_OPS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
             "aten.nonzero_static.default"}


class _Syncs(TorchDispatchMode):
    """Counts the ops that make a GPU wait for the host, and copies to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in _SYNC_OPS and not _in_library_forward():
            self.count += 1
        return func(*args, **(kwargs or {}))


def _in_library_forward() -> bool:
    return any(part in frame.filename for frame in traceback.extract_stack()
               for part in ("/site-packages/transformers/", "/site-packages/nnsight/"))


def _syncs(run) -> int:
    counter = _Syncs()
    copies = [0]
    originals = {name: getattr(torch.Tensor, name) for name in ("cpu", "numpy")}

    def counted(name):
        def method(self, *args, **kwargs):
            copies[0] += not _in_library_forward()
            return originals[name](self, *args, **kwargs)
        return method

    try:
        for name in originals:
            setattr(torch.Tensor, name, counted(name))
        with counter:
            run()
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    return counter.count + copies[0]


@pytest.fixture(scope="module", params=["transformer_lens", "nnsight"])
def model(request):
    return load_model("zoo:add-2d", backend=request.param)


@pytest.fixture(scope="module")
def pairs(model):
    prompts = generate(model.default_task.model_copy(update={"n": 16, "seed": 3}))
    return make_pairs(prompts, "operand_b", seed=0)


SWEEPS = {
    "exact patching": lambda model, pairs, **kw: patch_activations(model, pairs, engine="fast", **kw),
    "atp": lambda model, pairs, **kw: attribution_patch(model, pairs, method="atp", **kw),
    "frozen-norm ig_activations": lambda model, pairs, **kw: attribution_patch(
        model, pairs, method="ig_activations", freeze_norm=True, ig_steps=3, **kw),
    "relp": lambda model, pairs, **kw: attribution_patch(model, pairs, method="relp", freeze_norm=True, **kw),
}


@pytest.mark.parametrize("sweep", list(SWEEPS))
def test_no_host_round_trip_per_site(model, pairs, sweep):
    run = SWEEPS[sweep]
    common = dict(n_boot=1, progress=False)
    heads = _syncs(lambda: run(model, pairs, kind="attn_head", batch_size=16, **common))
    neurons = _syncs(lambda: run(model, pairs, kind="mlp_post", per_position=True, batch_size=16, **common))
    assert neurons == heads, (heads, neurons)  # 6 sites or 6,144 cells: the same round trips
    two_batches = _syncs(lambda: run(model, pairs, kind="mlp_post", per_position=True, batch_size=8, **common))
    assert two_batches <= 2 * heads, (heads, two_batches)


def test_no_host_round_trip_per_edge_or_mediator(model, pairs):
    common = dict(n_boot=1, progress=False, batch_size=16)
    few = _syncs(lambda: edge_attribution_patch(model, pairs, receivers=("logits",), **common))
    many = _syncs(lambda: edge_attribution_patch(model, pairs, receivers=("attn_in", "q", "k", "v", "mlp_in",
                                                                          "logits"), **common))
    assert many == few, (few, many)
    heads = _syncs(lambda: mediate(model, pairs, heads=True, per_position=False, **common))
    positions = _syncs(lambda: mediate(model, pairs, heads=True, per_position=True, **common))
    assert positions == heads, (heads, positions)
