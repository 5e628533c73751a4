"""The contrast core of the pair methods: one error class, one provenance, one packaging.

Every pair method validates its shared options through :func:`contrast` (bad ones raise
:class:`MethodError` before any forward pass), a tokenized :class:`PairBatch` gives the
same numbers and records the same dataset hash as the pairs it came from, and
:func:`package` normalises and summarises per-pair scores as written by hand below.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arithinterp.errors import ArithInterpError, MethodError
from arithinterp.methods import (
    attribution_patch,
    discover_circuit,
    edge_attribution_patch,
    mediate,
    patch_activations,
    path_patch,
    tokenize_pairs,
)
from arithinterp.methods import circuits as circuits_module
from arithinterp.methods.contrast import contrast, package
from arithinterp.models import Site, load_model
from arithinterp.results import bootstrap_ci
from arithinterp.tasks import TaskSpec, generate, make_pairs
from tests.conftest import scaled_variant
from tests.methods.test_circuits import build_planted

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")
FAST = {"progress": False, "n_boot": 20}


@pytest.fixture(scope="module")
def model(tiny_hf_dirs, tmp_path_factory):
    return load_model(str(scaled_variant(tiny_hf_dirs["gpt2"], tmp_path_factory.mktemp("contrast"))))


@pytest.fixture(scope="module")
def pairs():
    """One-token answers, so every method runs with either answer mode."""
    prompts = generate(TaskSpec(operation="add", operand_range=(0, 4), format="plain", n=8, seed=0))
    return make_pairs(prompts, "operand_a")


@pytest.fixture()
def no_forward(model, monkeypatch):
    calls = []
    monkeypatch.setattr(model.backend, "run", lambda *a, **k: calls.append(1))
    yield model
    assert calls == [], "a forward pass ran before the options were validated"


# -- one error class --------------------------------------------------------------------------

RECEIVERS = [Site("final_resid")]
METHODS = {
    "patch_activations": lambda m, p, **kw: patch_activations(m, p, **FAST, **kw),
    "attribution_patch": lambda m, p, **kw: attribution_patch(m, p, **FAST, **kw),
    "edge_attribution_patch": lambda m, p, **kw: edge_attribution_patch(m, p, **FAST, **kw),
    "path_patch": lambda m, p, **kw: path_patch(m, p, "attn_head", RECEIVERS, **FAST, **kw),
    "mediate": lambda m, p, **kw: mediate(m, p, **FAST, **kw),
    "discover_circuit": lambda m, p, **kw: discover_circuit(
        m, p, **{("score_metric" if k == "metric" else k): v for k, v in kw.items()}, progress=False),
}
BAD = {
    "direction": ("sideways", r"direction must be 'denoise' or 'noise', got 'sideways'"),
    "metric": ("logit_dif", r"unknown metric 'logit_dif'; valid: logit_diff, .* or a callable"),
    "answer": ("both", r"answer must be one of 'multi', 'single', got 'both'"),
}
# path patching always noises; mediation reads Stolfo's probabilities, not a metric option.
HAS = {"path_patch": ("metric", "answer"), "mediate": ("answer",)}
CASES = [(name, option) for name in METHODS for option in BAD if option in HAS.get(name, tuple(BAD))]


@pytest.mark.parametrize(("method", "option"), CASES)
def test_a_bad_shared_option_raises_method_error_saying_what_is_valid(no_forward, pairs, method, option):
    value, message = BAD[option]
    with pytest.raises(MethodError, match=message) as info:
        METHODS[method](no_forward, pairs, **{option: value})
    assert isinstance(info.value, ArithInterpError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "mediate"])
def test_a_batch_tokenized_with_another_answer_mode_is_refused(no_forward, pairs, method):
    single = tokenize_pairs(pairs, no_forward.tokenizer, answer="single")
    kwargs = {"prompts": pairs.clean} if method == "discover_circuit" else {}
    with pytest.raises(MethodError, match="tokenized with answer='single' but answer='multi'"):
        METHODS[method](no_forward, single, answer="multi", **kwargs)


def test_pairs_that_are_neither_pairs_nor_a_batch_are_refused(no_forward, pairs):
    with pytest.raises(MethodError, match="PromptPairs .* or a PairBatch"):
        contrast(no_forward, pairs.clean)


# -- a PairBatch keeps its provenance -----------------------------------------------------------


@pytest.mark.parametrize("method", ["patch_activations", "attribution_patch", "edge_attribution_patch",
                                    "path_patch"])
@pytest.mark.parametrize("answer", ["single", "multi"])
def test_a_batch_gives_the_numbers_and_hash_of_its_pairs(model, pairs, method, answer):
    batch = tokenize_pairs(pairs, model.tokenizer, answer=answer)
    assert batch.answer == answer and batch.dataset_hash == pairs.clean.hash
    from_pairs = METHODS[method](model, pairs, answer=answer)
    from_batch = METHODS[method](model, batch, answer=answer)
    assert np.array_equal(from_pairs.values.values, from_batch.values.values, equal_nan=True)
    for name in ("ci_low", "ci_high"):
        assert np.array_equal(from_pairs.extras[name].values, from_batch.extras[name].values, equal_nan=True)
    assert from_batch.meta.dataset_hash == from_pairs.meta.dataset_hash == pairs.clean.hash
    assert from_batch.meta.options == from_pairs.meta.options
    assert from_batch.meta.options["answer"] == answer


def test_slices_of_a_batch_keep_answer_mode_and_hash(model, pairs):
    batch = tokenize_pairs(pairs, model.tokenizer, answer="multi")
    part = batch.slice(2, 5)
    assert len(part) == 3 and (part.answer, part.dataset_hash) == ("multi", pairs.clean.hash)
    first = batch.answer_token(0)
    assert first.answer_positions.tolist() == batch.answer_positions[:1].tolist()
    assert (first.answer, first.dataset_hash) == ("multi", pairs.clean.hash)


# -- packaging ----------------------------------------------------------------------------------


def test_package_normalises_and_summarises_as_by_hand(model, pairs):
    con = contrast(model, pairs, answer="single", normalize=True)
    n = con.n_pairs
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(2, 3, n))
    clean_mean, corrupt_mean = 2.5, 0.5
    dims, coords = ("layer", "head"), {"layer": np.arange(2), "head": np.arange(3)}
    values, extras, meta = package(con, model, "demo", torch.from_numpy(raw), dims=dims, coords=coords,
                                   clean_mean=clean_mean, corrupt_mean=corrupt_mean, options=con.options,
                                   n_boot=200, seed=7)
    # Patched-run scale: the corrupt run's mean maps to 0 and the clean run's to 1.
    by_hand = (raw - 0.5) / 2.0
    np.testing.assert_array_equal(values.values, by_hand.mean(-1))
    _, low, high = bootstrap_ci(by_hand, axis=-1, n_boot=200, seed=7)
    np.testing.assert_array_equal(extras["ci_low"].values, low)
    np.testing.assert_array_equal(extras["ci_high"].values, high)
    assert np.all(extras["ci_low"].values <= values.values) and np.all(values.values <= extras["ci_high"].values)
    assert values.dims == dims and values.sel(layer=1, head=2).item() == by_hand[1, 2].mean()
    assert meta.dataset_hash == pairs.clean.hash and meta.seed == 7
    assert meta.extra == {"clean_mean": 2.5, "corrupt_mean": 0.5}
    # Effect scale: a change of the metric in units of the clean-corrupt gap (no offset).
    effect, _, _ = package(con, model, "demo", raw, dims=dims, coords=coords, clean_mean=clean_mean,
                           corrupt_mean=corrupt_mean, options={}, n_boot=10, seed=0, scale="effect")
    np.testing.assert_array_equal(effect.values, (raw / 2.0).mean(-1))
    # Pairs that all score the same have a zero-width interval at that score.
    same = np.broadcast_to(raw[..., :1], raw.shape)
    flat, flat_extras, _ = package(con, model, "demo", same, dims=dims, coords=coords, clean_mean=1.0,
                                   corrupt_mean=0.0, options={}, n_boot=50, seed=0)
    np.testing.assert_allclose(flat_extras["ci_low"].values, raw[..., 0])
    np.testing.assert_allclose(flat_extras["ci_high"].values, raw[..., 0])
    # Without normalisation the scores pass through, and a pos dim is labeled with its tokens.
    raw_con = contrast(model, pairs, answer="single", normalize=False)
    seq = raw_con.batch.seq_len
    per_pos, _, _ = package(raw_con, None, "demo", rng.normal(size=(seq, n)), dims=("pos",),
                            coords={"pos": np.arange(seq)}, clean_mean=clean_mean, corrupt_mean=corrupt_mean,
                            options={}, n_boot=10, seed=0)
    assert list(per_pos.coords["pos_token"].values) == list(raw_con.batch.str_tokens)


def test_package_refuses_a_flat_metric_when_normalising(model, pairs):
    con = contrast(model, pairs, answer="single")
    with pytest.raises(MethodError, match="cannot be normalised"):
        package(con, model, "demo", np.zeros((2, con.n_pairs)), dims=("layer",), coords={"layer": [0, 1]},
                clean_mean=1.0, corrupt_mean=1.0, options={}, n_boot=10, seed=0)


# -- precomputed component scores in circuit discovery -------------------------------------------


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return load_model(str(build_planted(tmp_path_factory.mktemp("planted") / "model")))


@pytest.fixture(scope="module")
def task():
    prompts = generate(TaskSpec(operation="add", digits=1, format="fixed", n=24, seed=3))
    return prompts, make_pairs(prompts, "random")


def _same_circuit(a, b) -> None:
    assert a.circuit == b.circuit and a.reached == b.reached
    assert np.array_equal(a.values.values, b.values.values)
    assert list(a.values.coords["component"].values) == list(b.values.coords["component"].values)
    assert np.array_equal(a.curve.values, b.curve.values, equal_nan=True)
    assert (a.circuit_faithfulness, a.circuit_ablated_score) == (b.circuit_faithfulness, b.circuit_ablated_score)
    assert a.meta.options == b.meta.options


@pytest.mark.parametrize("score", ["patching", "attribution"])
def test_discovery_with_precomputed_scores_equals_discovery_without(planted, task, monkeypatch, score):
    prompts, pairs = task
    inside = discover_circuit(planted, pairs, prompts, score=score, progress=False)
    sweep = patch_activations if score == "patching" else attribution_patch
    # As a report runs them: its own n_boot, one sweep per kind.
    given = {kind: sweep(planted, pairs, kind=kind, per_position=False, n_boot=100, progress=False)
             for kind in ("attn_head", "mlp_out")}

    def forbidden(*args, **kwargs):
        raise AssertionError("a scoring sweep ran although its scores were given")

    with monkeypatch.context() as m:
        m.setattr(circuits_module, "patch_activations", forbidden)
        m.setattr(circuits_module, "attribution_patch", forbidden)
        _same_circuit(discover_circuit(planted, pairs, prompts, score=score, scores=given, progress=False), inside)
    # One kind given, the other computed inside.
    _same_circuit(discover_circuit(planted, pairs, prompts, score=score, scores=given["attn_head"],
                                   progress=False), inside)


def test_precomputed_scores_of_another_sweep_are_refused(planted, task):
    prompts, pairs = task
    per_pos = patch_activations(planted, pairs, kind="attn_head", n_boot=1, progress=False)
    with pytest.raises(MethodError, match="per_position=True"):
        discover_circuit(planted, pairs, prompts, scores=per_pos, progress=False)
    noise = patch_activations(planted, pairs, kind="mlp_out", per_position=False, direction="noise", n_boot=1,
                              progress=False)
    with pytest.raises(MethodError, match="direction='noise'"):
        discover_circuit(planted, pairs, prompts, scores={"mlp_out": noise}, progress=False)
    heads = patch_activations(planted, pairs, kind="attn_head", per_position=False, n_boot=1, progress=False)
    with pytest.raises(MethodError, match="AttributionResult"):
        discover_circuit(planted, pairs, prompts, score="attribution", scores=heads, progress=False)
    with pytest.raises(MethodError, match="not one of components"):
        discover_circuit(planted, pairs, prompts, components=("mlp_out",), scores=heads, progress=False)
    others = make_pairs(generate(TaskSpec(operation="add", digits=1, format="fixed", n=24, seed=4)), "random")
    other_heads = patch_activations(planted, others, kind="attn_head", per_position=False, n_boot=1,
                                    progress=False)
    with pytest.raises(MethodError, match="other prompts"):
        discover_circuit(planted, pairs, prompts, scores=other_heads, progress=False)
