"""Operand grids: one sweep over every (a, b) equals a literal per-prompt run, and a task
without a small grid is refused with a reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arithinterp.errors import MethodError
from arithinterp.methods.grid import grid_activations, operand_grid, operand_grid_spec
from arithinterp.models import Site, load_model
from arithinterp.tasks import TaskSpec

SPEC = TaskSpec(operation="add", operand_range=(0, 4), format="plain")


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request, tiny_hf_dirs):
    return load_model(str(tiny_hf_dirs[request.param]), dtype="float64")


def test_grid_activations_equal_a_literal_run_per_prompt(model):
    """Batched over the grid (batch size 7, so batches straddle rows of the grid) and
    reshaped to [a, b, ...]: each cell is that one prompt's own run_with_cache."""
    sites = [Site("mlp_post", 1, pos=-1), Site("attn_head", 0, pos=-1),
             Site("attn_head", 1, head=2, pos=-1), Site("resid_mid", 0)]
    z = grid_activations(model, SPEC, sites, batch_size=7)
    writes = grid_activations(model, SPEC, sites, heads="write", batch_size=7)
    a, b, _, queries, _ = operand_grid(SPEC)
    W_O = model.weights().W_O.detach().double()
    assert z[sites[0]].shape == (5, 5, model.shape.d_mlp)
    assert z[sites[1]].shape == (5, 5, model.shape.n_heads, model.shape.d_head)
    assert writes[sites[1]].shape == (5, 5, model.shape.n_heads, model.shape.d_model)
    assert z[sites[3]].shape == (5, 5, 4, model.shape.d_model)  # no position fixed: pos kept
    for i in (0, 8, 13, 24):
        _, cache = model.run_with_cache(model.to_tokens([queries[i]]), sites)
        cell = (int(a[i]), int(b[i]))
        for s in sites:
            torch.testing.assert_close(z[s][cell], cache[s][0].double(), rtol=1e-10, atol=1e-12)
        literal = torch.stack([cache[sites[1]][0, h].double() @ W_O[0, h] for h in range(model.shape.n_heads)])
        torch.testing.assert_close(writes[sites[1]][cell], literal, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(writes[sites[2]][cell], cache[sites[2]][0].double() @ W_O[1, 2],
                                   rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(writes[sites[0]][cell], z[sites[0]][cell])  # not a head: unchanged


def test_grid_activations_refuse_a_bad_option_before_running(model):
    with pytest.raises(MethodError, match="valid: \\['z', 'write'\\]"):
        grid_activations(model, SPEC, [Site("mlp_post", 0, pos=-1)], heads="out")


def test_operand_grid_spec_makes_the_domain_explicit_or_says_why_not():
    spec = operand_grid_spec(TaskSpec(operation="add", digits=1, format="plain"))
    assert spec.operand_range == (0, 9)
    a, b, result, queries, answers = operand_grid(spec)
    assert len(a) == 100 and queries[23] == "2+3=" and answers[23] == "5" and result[99] == 18
    assert operand_grid_spec(TaskSpec(operation="modadd", p=7)).operand_range is None  # 0..p-1
    with pytest.raises(MethodError, match="900 values each \\(more than 150\\)"):
        operand_grid_spec(TaskSpec(operation="add", digits=3, format="plain"), max_side=150)
    with pytest.raises(MethodError, match="few-shot"):
        operand_grid_spec(TaskSpec(operation="add", digits=1, format="plain", few_shot=2))
    np.testing.assert_array_equal(operand_grid(TaskSpec(operation="modadd", p=7))[2][:8],
                                  [0, 1, 2, 3, 4, 5, 6, 1])
