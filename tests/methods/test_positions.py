"""``positions=`` of the sweeps: negative positions count from the end, the result's ``pos``
holds absolute positions, the numbers equal the full sweep's at those positions, and
``Result.at(pos=-1)`` reads the last position."""

from __future__ import annotations

import numpy as np
import pytest

from arithinterp.errors import MethodError
from arithinterp.methods import fit_probes
from arithinterp.methods.attribution import attribution_patch
from arithinterp.methods.metrics import tokenize_pairs
from arithinterp.methods.patching import patch_activations
from arithinterp.methods.probes import ProbeError
from arithinterp.models import load_model
from arithinterp.tasks import TaskSpec, generate, make_pairs

FAST = {"progress": False, "n_boot": 10, "normalize": False}


@pytest.fixture(scope="module")
def model(tiny_hf_dirs):
    return load_model(str(tiny_hf_dirs["gpt2"]))


@pytest.fixture(scope="module")
def batch(model):
    ps = generate(TaskSpec(operation="add", digits=2, format="fixed", n=6, seed=1))
    return tokenize_pairs(make_pairs(ps, "operand_a"), model.tokenizer, answer="multi")


@pytest.mark.parametrize("engine", ["fast", "literal"])
def test_patching_positions_count_from_the_end(model, batch, engine):
    n = batch.seq_len
    full = patch_activations(model, batch, kind="attn_head", engine=engine, **FAST)
    some = patch_activations(model, batch, kind="attn_head", engine=engine, positions=[-1, 2], **FAST)
    assert list(some.values["pos"].values) == [n - 1, 2]
    assert list(some.values["pos_token"].values) == [batch.str_tokens[n - 1], batch.str_tokens[2]]
    np.testing.assert_allclose(some.values.values, full.values.sel(pos=[n - 1, 2]).values, atol=1e-6)
    np.testing.assert_allclose(some.extras["ci_low"].values,
                               full.extras["ci_low"].sel(pos=[n - 1, 2]).values, atol=1e-6)
    assert some.meta.options["positions"] == [n - 1, 2] and some.meta.extra["seq_len"] == n
    assert float(abs(some.values.sel(pos=n - 1)).max()) > 1e-4  # the last position carries effects
    # .at(pos=-1): the last position of the sequence, on the full sweep and on the subset.
    assert full.at(pos=-1).identical(full.values.sel(pos=n - 1))
    np.testing.assert_allclose(some.at(pos=-1).values, full.at(pos=-1).values, atol=1e-6)
    assert list(some.at(pos=[-1])["pos"].values) == [n - 1]


def test_attribution_positions_count_from_the_end(model, batch):
    n = batch.seq_len
    full = attribution_patch(model, batch, kind="resid_pre", **FAST)
    last = attribution_patch(model, batch, kind="resid_pre", positions=[-1], validate=True, **FAST)
    assert list(last.values["pos"].values) == [n - 1]
    np.testing.assert_allclose(last.values.values, full.values.sel(pos=[n - 1]).values, atol=1e-9)
    np.testing.assert_allclose(last.at(pos=-1).values, full.at(pos=-1).values, atol=1e-9)
    assert last.meta.extra["validation"]["n_cells"] == model.shape.n_layers


def test_bad_positions_fail_before_any_forward_pass(model, batch, monkeypatch):
    def no_forward(*args, **kwargs):
        raise AssertionError("a forward pass ran")

    monkeypatch.setattr(model, "run_with_cache", no_forward)
    monkeypatch.setattr(model, "logits", no_forward)
    n = batch.seq_len
    with pytest.raises(MethodError, match="outside"):
        patch_activations(model, batch, positions=[n], **FAST)
    with pytest.raises(MethodError, match="outside"):
        patch_activations(model, batch, positions=[-n - 1], **FAST)
    with pytest.raises(MethodError, match="twice"):
        patch_activations(model, batch, positions=[-1, n - 1], **FAST)
    with pytest.raises(MethodError, match="per_position=True"):
        patch_activations(model, batch, positions=[-1], per_position=False, **FAST)


def test_probe_positions_count_from_the_end(model):
    prompts = generate(TaskSpec(operation="add", digits=2, format="fixed", n=64, seed=0))
    kw = dict(control=False, n_boot=5, progress=False)
    res = fit_probes(model, prompts, "SC_0", positions=[-1, 0], **kw)
    n = int(res.meta.extra["seq_len"])
    assert list(res.values["pos"].values) == [n - 1, 0]
    assert res.at(pos=-1).identical(res.values.sel(pos=n - 1))
    with pytest.raises(ProbeError, match="outside"):
        fit_probes(model, prompts, "SC_0", positions=[n], **kw)
