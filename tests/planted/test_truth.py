"""Each planted model's truth is true: checked by exact ablation of the model's own components.

* every model answers every prompt of its task;
* the circuit is sufficient: resampling every component outside it leaves the logits as they are;
* each member is necessary (ablating it loses the answer), except that a backup is necessary
  only together with the other backup, and the negative head lowers the answer's logit;
* a decoy's ablation (resampled) changes nothing.
"""

from __future__ import annotations

import pytest
import torch

from arithinterp.methods.ablation import ablate
from arithinterp.methods.components import direct_logit_attribution
from arithinterp.models import Site
from arithinterp.planted import PLANTED, planted, planted_spec
from arithinterp.planted.models import LOOKUP_DECOYS, LOOKUP_N

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def suite():
    return {}


def _get(suite, name, backend="transformer_lens"):
    if (name, backend) not in suite:
        suite[name, backend] = planted(name, backend)
    return suite[name, backend]


def _answers(p, labels=(), kind="mean"):
    """Logits at the answer positions ``[prompt, answer token, vocab]`` with ``labels`` ablated."""
    seqs, _, pos = p.tokens()
    sites = [Site.from_label(x) for x in labels]
    logits = ablate(p.model, seqs, sites, kind=kind) if sites else p.model.logits(seqs)
    return logits[:, pos].double()


def _accuracy(p, logits, rows=None):
    _, answers, _ = p.tokens()
    answers = answers if rows is None else answers[rows]
    return float((logits.argmax(-1) == answers).all(-1).double().mean())


def _answer_logit(p, logits):
    _, answers, _ = p.tokens()
    return logits.gather(-1, answers.unsqueeze(-1)).squeeze(-1).mean(-1)


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
@pytest.mark.parametrize("name", PLANTED)
def test_answers_and_circuit_is_sufficient(suite, name, backend):
    p = _get(suite, name, backend)
    full = _answers(p)
    assert _accuracy(p, full) == 1.0
    outside = [x for x in p.labels if x not in p.truth]
    kept = _answers(p, outside, "resample")
    torch.testing.assert_close(kept, full, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", [n for n in PLANTED if n != "lookup"])
def test_members_are_necessary(suite, name):
    p = _get(suite, name)
    full = _answers(p)
    for label, role in p.roles.items():
        if role != "member":
            continue
        for kind in ("mean", "zero", "resample"):
            assert _accuracy(p, _answers(p, [label], kind)) < 0.5, (label, kind)
    if name == "and":  # its decoys write the same in every prompt: even their mean is exact
        torch.testing.assert_close(_answers(p, ["L0H2", "L0H3"], "mean"), full, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", PLANTED)
def test_decoys_change_nothing(suite, name):
    p = _get(suite, name)
    decoys = [x for x, r in p.roles.items() if r == "decoy"]
    assert decoys
    full = _answers(p)
    if name == "lookup":
        # One decoy neuron fires per prompt: resampled together (one draw) the residual norm
        # stays; one alone moves it and LayerNorm rescales the logits a little.
        torch.testing.assert_close(_answers(p, decoys, "resample"), full, atol=1e-4, rtol=1e-5)
        for label in decoys:
            one = _answers(p, [label], "resample")
            assert _accuracy(p, one) == 1.0
            torch.testing.assert_close(one, full, atol=0.05 * float(full.abs().max()), rtol=0)
        return
    for label in decoys:
        torch.testing.assert_close(_answers(p, [label], "resample"), full, atol=1e-4, rtol=1e-5)


def test_backups_take_over_for_each_other(suite):
    p = _get(suite, "backup")
    full = _answers(p)
    for kind in ("mean", "zero"):
        for label in ("L0H0", "L0H1"):
            one = _answers(p, [label], kind)
            assert _accuracy(p, one) == 1.0
            # The lookup saturates on one copy: the answer's logit moves only by LayerNorm's rescaling.
            ratio = _answer_logit(p, one) / _answer_logit(p, full)
            assert float((ratio - 1).abs().max()) < 0.1
        assert _accuracy(p, _answers(p, ["L0H0", "L0H1"], kind)) < 0.2


def test_negative_head_lowers_the_answer(suite):
    p = _get(suite, "negative")
    full = _answers(p)
    for kind in ("mean", "zero", "resample"):
        without = _answers(p, ["L1H0"], kind)
        assert _accuracy(p, without) == 1.0
        before, after = _answer_logit(p, full), _answer_logit(p, without)
        # (a resampled prompt with the same sum changes nothing)
        assert bool((after >= before - 1e-4).all()) and float(after.mean()) > 1.5 * float(before.mean()), kind


def test_composition_has_no_direct_effect(suite):
    p = _get(suite, "compose")
    dla = direct_logit_attribution(p.model, p.prompts)
    assert float(abs(dla.values.sel(component="L0H0")).max()) < 1e-4
    # ... and yet the answer needs it (test_members_are_necessary), through L1H0.
    assert _accuracy(p, _answers(p, ["L1H0"], "resample")) < 0.5


def test_lookup_neurons_each_answer_their_pair(suite):
    p = _get(suite, "lookup")
    full = _answers(p)
    own = torch.tensor(LOOKUP_N * p.prompts.frame["operand_a"].to_numpy() + p.prompts.frame["operand_b"].to_numpy())
    assert sorted(set(own.tolist())) == list(range(LOOKUP_N**2))  # the prompts use every entry
    for neuron in range(LOOKUP_N**2):
        rows = own == neuron
        ablated = _answers(p, [f"L0N{neuron}"], "zero")
        assert _accuracy(p, ablated[rows], rows) == 0.0
        torch.testing.assert_close(ablated[~rows], full[~rows], atol=1e-4, rtol=1e-5)
    dead = [f"L0N{n}" for n in range(LOOKUP_DECOYS.stop, p.model.shape.d_mlp)]
    torch.testing.assert_close(_answers(p, dead, "zero"), full, atol=1e-4, rtol=1e-5)


def test_truth_labels_are_site_labels():
    for name in PLANTED:
        spec = planted_spec(name)
        for label in spec.roles:
            assert Site.from_label(label).label == label
        assert spec.truth and spec.truth <= set(spec.roles)


def test_models_are_built_once_into_the_cache(tmp_path):
    from arithinterp.errors import ConfigError
    from arithinterp.planted.suite import build_dir

    path = build_dir("compose", tmp_path)
    weights = path / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert build_dir("compose", tmp_path) == path and weights.stat().st_mtime_ns == stamp
    p = planted("compose", "nnsight", cache_dir=tmp_path, n=12, seed=1)
    assert p.path == path and len(p.prompts) == 12 and p.model.backend_name == "nnsight"
    with pytest.raises(ConfigError, match="valid: and, decoy"):
        planted("nope")
