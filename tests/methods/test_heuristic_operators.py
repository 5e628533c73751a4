"""Nikankin et al.'s heuristics on every operator: valid-problem grids, per-operator families, planted
neurons scored against a literal overlap, multi-result neurons for ÷, and CNA's head scan."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arithinterp.errors import ArithInterpError
from arithinterp.methods._common import make_meta
from arithinterp.methods.cna import find_cna, head_scan
from arithinterp.methods.components import comparative_neuron_analysis
from arithinterp.methods.grid import grid_activations, operand_grid
from arithinterp.methods.heuristic_families import heuristics, topk_overlap
from arithinterp.methods.neurons import (
    _maps,
    classify_neurons,
    find_heuristics,
    heuristic_knockout,
    neuron_maps,
    neuron_maps_from_activations,
    problem_grid,
)
from arithinterp.models import Site, load_model
from arithinterp.tasks import TaskSpec, generate, tokenize

#: Each operator on operands 0..99 as zoo:ops-2d-tok writes it: no negative difference, products
#: up to 999, no division by 0.
GRIDS = {
    "add": (TaskSpec(operation="add", operand_range=(0, 99)), None),
    "sub": (TaskSpec(operation="sub", operand_range=(0, 99), allow_negative=False), None),
    "mul": (TaskSpec(operation="mul", operand_range=(0, 99)), 999),
    "floordiv": (TaskSpec(operation="floordiv", operand_range=(0, 99)), None),
}


def _grid(op: str):
    spec, max_result = GRIDS[op]
    return problem_grid(spec, max_result=max_result)


def _planted(op: str, k: np.ndarray, kv: np.ndarray):
    spec, max_result = GRIDS[op]
    _, a, b, r, _, _ = problem_grid(spec, max_result=max_result)
    maps = _maps(np.atleast_2d(k), np.atleast_2d(kv), a, b, r, layer=0, neurons=np.arange(np.atleast_2d(k).shape[0]),
                 meta=make_meta("neuron_maps", None), operation=op)
    return classify_neurons(maps), a, b, r


def test_the_grid_holds_the_valid_problems_only():
    """Literal counts: a >= b (5050 of 10^4), products <= 999 (counted by a loop), b >= 1 (9900)."""
    expected = {"add": 10_000, "sub": 5050, "mul": sum(1 for x in range(100) for y in range(100) if x * y <= 999),
                "floordiv": 9900}
    for op, (spec, max_result) in GRIDS.items():
        keep, a, b, r, queries, answers = problem_grid(spec, max_result=max_result)
        assert keep.sum() == len(a) == len(queries) == expected[op]
        assert {"sub": (a >= b).all(), "mul": (a * b <= 999).all(), "floordiv": (b >= 1).all()}.get(op, True)
        ga, gb, *_ = operand_grid(spec)
        assert len(ga) == 10_000 and not keep[(ga < gb) if op == "sub" else (gb == 0) if op == "floordiv" else
                                              (ga * gb > 999) if op == "mul" else np.zeros(10_000, bool)].any()
        assert queries[5] == f"{a[5]}{spec.symbol}{b[5]}=" and answers[5] == str(r[5])


def test_the_families_follow_the_operator():
    """The paper's per-operator tables, rescaled to operands 0..99 (lengths at least 2)."""
    def lengths(hs, prefix):
        return sorted({int(h.name.split(",")[1][:-1]) - int(h.name.split("[")[1].split(",")[0])
                       for h in hs if h.name.startswith(prefix) and "[" in h.name})

    hs = {op: heuristics(*problem_grid(spec, max_result=m)[1:4], operation=op) for op, (spec, m) in GRIDS.items()}
    assert lengths(hs["add"], "a in") == [3, 10, 17, 33]  # 10/30/50/100 of 300
    assert lengths(hs["add"], "result in") == [3, 10, 17]  # 10/30/50 of 600, results 0..198
    assert lengths(hs["sub"], "result in") == [3, 10, 17]  # 10/30/50 of 300, results 0..99
    assert lengths(hs["mul"], "a in") == [2, 3]  # 3/5/10 of 300
    assert lengths(hs["mul"], "result in") == [10, 30, 50, 100]  # of 1000, results 0..999
    assert lengths(hs["floordiv"], "result in") == [2, 3, 33]  # 2/10/100 of 300
    div = {h.family for h in hs["floordiv"]}
    assert "result_mod" not in div and "result_pattern" not in div
    _, a, b, r, _, _ = _grid("floordiv")
    assert not any((h.mask & (r == 0)).any() for h in hs["floordiv"] if h.map_kind == "kv")
    # × and ÷ result heuristics read the top min(|H|, 100) problems; + and − read |H|.
    for op in ("mul", "floordiv"):
        assert all(h.top_k == min(int(h.mask.sum()), 100) for h in hs[op] if h.map_kind == "kv")
    assert all(h.k is None for op in ("add", "sub") for h in hs[op])


def _literal_score(plant: np.ndarray, mask: np.ndarray, k: int) -> float:
    """|top-k ∩ H| / k for an indicator map, ties shared: the plant's cells first, then the rest."""
    p, n = int(plant.sum()), len(plant)
    both = int((plant & mask).sum())
    if k <= p:
        return both / p
    return (both + (k - p) * int((mask & ~plant).sum()) / (n - p)) / k


@pytest.mark.parametrize("op", list(GRIDS))
def test_planted_indicators_score_their_literal_overlap(op):
    """A neuron whose map is the indicator of a heuristic scores 1 on it, and every heuristic scores
    exactly the tie-shared overlap computed literally, so whatever else passes t = 0.6 is what the
    sets themselves imply. Masked cells are not problems, so they cannot be in any top-k."""
    spec, max_result = GRIDS[op]
    _, a, b, r, _, _ = problem_grid(spec, max_result=max_result)
    hs = heuristics(a, b, r, operation=op)
    rng = np.random.default_rng(0)
    picks = [hs[i] for i in rng.choice(len(hs), size=12, replace=False)]
    for plant in picks:
        ind = plant.mask.astype(float)
        zero = np.zeros_like(ind)
        res, *_ = _planted(op, ind if plant.map_kind == "k" else zero, ind if plant.map_kind == "kv" else zero)
        assert float(res.values.sel({"class": plant.name}).item()) == pytest.approx(1.0)
        got = res.values.sel({"class": [h.name for h in hs]}).values[0]
        want = [_literal_score(plant.mask, h.mask, h.top_k) if h.map_kind == plant.map_kind
                else _literal_score(np.ones_like(plant.mask), h.mask, h.top_k) for h in hs]
        np.testing.assert_allclose(got, want, atol=1e-9)


@pytest.mark.parametrize("op", list(GRIDS))
def test_a_planted_heuristic_is_that_heuristic_and_nothing_else(op):
    """Four heuristics of different families, each planted alone on its own map (K for operand
    heuristics, KV for result ones): each neuron implements exactly its heuristic, score 1."""
    spec, max_result = GRIDS[op]
    _, a, b, r, _, _ = problem_grid(spec, max_result=max_result)
    names = ["a = b", "a,b = 0 mod 3", "b = 1 mod 5"] + (["result = 3 mod 7"] if op != "floordiv" else [])
    masks = {h.name: h.mask for h in heuristics(a, b, r, operation=op)}
    k = np.stack([masks[n].astype(float) if not n.startswith("result") else np.zeros(len(a)) for n in names])
    kv = np.stack([masks[n].astype(float) if n.startswith("result") else np.zeros(len(a)) for n in names])
    res, *_ = _planted(op, k, kv)
    for i, name in enumerate(names):
        assert res.neuron_heuristics(i) == [name]
        assert float(res.values.sel(neuron=i, **{"class": name})) == pytest.approx(1.0)


def test_multi_result_neurons_of_division():
    """÷: a KV map that is the indicator of results {1, 3} (1 holds 86% of those problems, so no
    single result reaches 95%) is the multi-result heuristic "result in {1, 3}" with score 1; a
    single result, eleven results (no five hold 95%), and sets with 0 (a < b) are not multi-result."""
    _, a, b, r, _, _ = _grid("floordiv")
    plants = {"{1, 3}": np.isin(r, [1, 3]), "{5}": r == 5, "{10..20}": np.isin(r, range(10, 21)),
              "{0, 1}": np.isin(r, [0, 1])}
    kv = np.stack([m.astype(float) for m in plants.values()])
    res, *_ = _planted("floordiv", np.zeros_like(kv), kv)
    multi = res.values.isel({"class": np.flatnonzero(res.values.coords["family"].values == "multi_result")})
    assert list(multi.coords["class"].values) == ["result in {1, 3}"]
    assert res.result_set("result in {1, 3}") == (1, 3)
    assert multi.values[:, 0].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0])
    assert "result in {1, 3}" in res.neuron_heuristics(0)
    # Share of result 1 among the plant's problems: what a single-result heuristic would need.
    assert np.sum(r == 1) / np.sum(plants["{1, 3}"]) == pytest.approx(0.857, abs=0.01)
    for op in ("add", "sub", "mul"):  # the family is ÷'s only
        res, *_ = _planted(op, np.zeros((1, len(_grid(op)[1]))),
                           np.isin(_grid(op)[3], [1, 3]).astype(float)[None])
        assert "multi_result" not in set(res.values.coords["family"].values)


def test_topk_overlap_with_a_capped_k_is_the_literal_intersection():
    rng = np.random.default_rng(2)
    values = rng.random((3, 60))
    masks = rng.random((2, 60)) < 0.4
    ks = [5, int(masks[1].sum())]
    got = topk_overlap(values, masks, ks)
    for row, score in zip(values, got):
        for j, kk in enumerate(ks):
            top = set(np.argsort(-row)[:kk])
            assert score[j] == pytest.approx(len(top & set(np.flatnonzero(masks[j]))) / kk)
    with pytest.raises(ValueError, match="one size"):
        topk_overlap(values, masks, [0, 3])


# -- on a model: the masked cells never reach the maps --------------------------------------------


@pytest.fixture(scope="module")
def add_model():
    return load_model("zoo:add-2d-tok")  # every number up to 198 is one token


@pytest.mark.parametrize(("op", "max_result"), [("sub", None), ("floordiv", None), ("mul", 198)])
def test_masked_cells_never_count(add_model, op, max_result):
    """Activations of a plant that fires on the valid a = b problems and fires 10^6 on every masked
    cell (a < b, b = 0, a product above 198): the maps hold the valid problems only, the masked
    cells are NaN in grid(), and on its K map the neuron is "a = b" with score 1 and nothing else
    (without the mask the 10^6 cells would fill its top-k)."""
    spec = GRIDS[op][0]
    ga, gb, gr, _, _ = operand_grid(spec)
    keep, a, b, r, _, _ = problem_grid(spec, max_result=max_result)
    acts = torch.zeros(len(ga), add_model.shape.d_mlp, dtype=torch.float64)
    acts[torch.as_tensor(np.flatnonzero(keep & (ga == gb))), 3] = 1.0
    acts[torch.as_tensor(np.flatnonzero(~keep)), 3] = 1e6
    maps = neuron_maps_from_activations(add_model, spec, acts, layer=0, neurons=[3], max_result=max_result)
    assert maps.sizes == {"neuron": 1, "prompt": int(keep.sum())}
    assert float(maps.values.max()) == 1.0
    grid = maps.grid(3).values
    assert np.isnan(grid).sum() == (~keep).sum() - (100 if op == "floordiv" else 0)  # column b = 0 is not drawn
    res = classify_neurons(maps)
    kinds = dict(zip(res.values.coords["class"].values, res.values.coords["map_kind"].values))
    assert [h for h in res.neuron_heuristics(3) if kinds[h] == "k"] == ["a = b"]  # on the K map (the KV map
    assert float(res.values.sel(neuron=3, **{"class": "a = b"})) == 1.0  # is K times the vote for the result)
    assert res.meta.options["max_result"] == max_result


def test_a_result_that_is_not_one_token_is_refused_or_masked(add_model):
    spec = TaskSpec(operation="mul", operand_range=(0, 30))
    with pytest.raises(ArithInterpError, match="max_result"):
        neuron_maps(add_model, spec, layer=0, neurons=[0])
    maps = neuron_maps(add_model, spec, layer=0, neurons=[0], max_result=198)
    assert (maps.values.coords["result"].values <= 198).all()


def test_knockout_and_the_pipeline_grid_on_a_masked_grid(add_model):
    """find_heuristics with operand_range / max_result classifies the valid grid; the knockout draws
    its prompts from the same problems (every answer read at a real number token)."""
    spec = TaskSpec(operation="mul", operand_range=(0, 14))
    out = find_heuristics(add_model, spec, layer=0, knockout=1, knockout_n=20, operand_range=(0, 40),
                          max_result=198)
    c = out["classification"]
    assert c.meta.options["n_problems"] == sum(1 for x in range(41) for y in range(41) if x * y <= 198)
    assert c.operation == "mul"
    h = str(out["knockout"].values.coords["class"].values[0])
    grid_spec = spec.model_copy(update={"operand_range": (0, 40)})
    ko = heuristic_knockout(add_model, grid_spec, c, h, n=20)
    np.testing.assert_allclose(ko.values.values, out["knockout"].values.sel({"class": h}).values)
    assert sum(ko.meta.extra["n_prompts"]) > 0


def test_neuron_maps_of_a_masked_grid_equal_the_model(add_model):
    spec = TaskSpec(operation="sub", operand_range=(0, 19), allow_negative=False)
    maps = neuron_maps(add_model, spec, layer=0, neurons=[5])
    assert maps.sizes["prompt"] == 210
    row = maps.values.isel(prompt=57, neuron=0)
    a, b = int(row.coords["operand_a"]), int(row.coords["operand_b"])
    assert a >= b
    site = Site("mlp_post", 0, pos=-1)
    _, cache = add_model.run_with_cache(add_model.to_tokens([f"{a}-{b}="]), [site])
    np.testing.assert_allclose(float(row), float(cache[site][0, 5]), atol=1e-6)
    full = grid_activations(add_model, spec, [site])[site]
    again = neuron_maps_from_activations(add_model, spec, full, layer=0, neurons=[5])
    assert again.replace(meta=maps.meta) == maps


# -- CNA: Yu & Ananiadou's head scan ---------------------------------------------------------------


def test_head_scan_equals_ablating_each_head_by_hand(add_model):
    prompts = generate(TaskSpec(operation="add", operand_range=(0, 99), n=40, seed=3))
    scan = head_scan(add_model, prompts, batch_size=16)
    tk = tokenize(prompts, add_model.tokenizer, answer="single")
    tokens, ans = tk.tokens[:, : tk.prompt_len], tk.answer_tokens[:, 0]

    def prob(patches):
        logits = add_model.logits(tokens, patches)[:, -1].double()
        return torch.softmax(logits, -1).gather(1, ans[:, None])[:, 0]

    clean = prob({})
    assert scan.meta.extra["clean_prob"] == pytest.approx(float(clean.mean()), abs=1e-6)
    for head in range(add_model.shape.n_heads):
        ablated = prob({Site("attn_head", 0, head=head): torch.zeros(())})
        assert float(scan.values.sel(layer=0, head=head)) == pytest.approx(float((clean - ablated).mean()), abs=1e-6)
    out = find_cna(add_model, prompts)
    best = int(scan.values.sel(layer=0).argmax())
    assert int(out["cna"].values.coords["ablated_head"]) == best
    direct = comparative_neuron_analysis(add_model, prompts, head=(0, best))
    np.testing.assert_allclose(out["cna"].values.values, direct.values.values)
