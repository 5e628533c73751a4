"""digit_confidence (Gambardella et al., ACL 2024) against known answers: a literal Hugging Face
loop, a planted model whose per-position probabilities are set by construction, teacher forcing
equal to free running where the free prefix is right, and both backends on zoo models."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
import torch
from scipy import stats

from arithinterp.errors import ArithInterpError, ConfigError, MethodError, TokenizationError
from arithinterp.methods import DigitConfidenceResult, digit_confidence, evaluate
from arithinterp.methods.digit_confidence_result import RECORD_METRICS
from arithinterp.methods.registry import RunContext, get_method
from arithinterp.models import Model, ModelShape, Site, load_model
from arithinterp.models.backends.base import Backend, HookFn
from arithinterp.tasks import PromptSet, TaskSpec, generate
from arithinterp.zoo import zoo_path
from tests.conftest import DIGIT_VOCAB, digit_tokenizer

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

MUL = TaskSpec(operation="mul", digits=3, format="fixed_reversed", n=40, seed=5)


# ---- the oracle: token by token, plain Hugging Face calls ----------------------------------------


def _probs(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(hf(torch.tensor([ids])).logits[0, -1].double(), -1)


def literal_oracle(hf, tokenizer, prompts: PromptSet) -> tuple[np.ndarray, np.ndarray]:
    """Records ``[prompt, digit, RECORD_METRICS]`` and free-running tokens, one prompt and one
    position at a time: greedy decoding from the prompt, and teacher forcing on the true prefix."""
    records, decoded = [], []
    for prompt, answer in zip(prompts.prompts, prompts.answers):
        ids = tokenizer(prompt)["input_ids"]
        true = tokenizer(prompt + answer)["input_ids"][len(ids):]
        free, rows = [], []
        for i, target in enumerate(true):
            p_free, p_forced = _probs(hf, ids + free), _probs(hf, ids + true[:i])
            a_free, a_forced = int(p_free.argmax()), int(p_forced.argmax())
            rows.append([a_free == target, p_free[a_free], p_free[target],
                         a_forced == target, p_forced[a_forced], p_forced[target]])
            free.append(a_free)
        records.append(np.array(rows, dtype=float))
        decoded.append(free)
    return np.stack(records), np.array(decoded)


@pytest.fixture(scope="module")
def mul():
    return load_model("zoo:mul-3d")


@pytest.fixture(scope="module")
def mul_nn():
    return load_model("zoo:mul-3d", backend="nnsight")


@pytest.fixture(scope="module")
def mul_prompts():
    return generate(MUL)


@pytest.fixture(scope="module")
def mul_result(mul, mul_prompts):
    return digit_confidence(mul, mul_prompts, batch_size=16, progress=False)


@pytest.fixture(scope="module")
def mul_oracle(mul_prompts):
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(zoo_path("mul-3d"), use_safetensors=True).eval()
    from transformers import AutoTokenizer

    return literal_oracle(hf, AutoTokenizer.from_pretrained(zoo_path("mul-3d")), mul_prompts)


def _records(res: DigitConfidenceResult) -> np.ndarray:
    return res.records.values.transpose("prompt", "digit", "metric").values


def test_fast_equals_the_literal_hugging_face_loop(mul_result, mul_oracle):
    records, decoded = mul_oracle
    np.testing.assert_array_equal(mul_result.records.extras["decoded"].values, decoded)
    np.testing.assert_allclose(_records(mul_result), records, atol=2e-5)
    # the summary is the mean of the records; the headline is the argmax's probability
    np.testing.assert_allclose(mul_result.values.sel(metric="confidence_free").values,
                               records[..., RECORD_METRICS.index("confidence_free")].mean(0), atol=2e-5)
    # the case that matters: free running goes wrong on mul-3d, so the two decodings differ
    assert (decoded != mul_result.records.extras["true_token"].values).any()
    assert not np.allclose(records[..., 1], records[..., 4])


def test_teacher_forced_equals_free_running_where_the_free_prefix_is_right(mul_result, mul_oracle):
    oracle, decoded = mul_oracle
    true = mul_result.records.extras["true_token"].values
    right_prefix = np.cumprod(np.c_[np.ones(len(true), bool), decoded[:, :-1] == true[:, :-1]], axis=1).astype(bool)
    assert right_prefix.any() and (~right_prefix).any()
    forced = _records(mul_result)[..., 3:]  # the fast engine's teacher-forced records
    np.testing.assert_allclose(oracle[..., :3][right_prefix], forced[right_prefix], atol=2e-5)
    # where the prefix is wrong, the two decodings read different tokens and disagree somewhere
    assert not np.allclose(oracle[..., 1][~right_prefix], forced[..., 1][~right_prefix], atol=1e-3)


def test_teacher_forced_accuracy_is_evaluates_per_digit_accuracy(mul, mul_prompts, mul_result):
    per_digit = evaluate(mul, mul_prompts, progress=False).per_digit.to_numpy()
    np.testing.assert_allclose(mul_result.values.sel(metric="accuracy_forced").values, per_digit)


def test_engines_agree_with_and_without_mc_dropout(mul, mul_prompts):
    prompts = mul_prompts[:24]
    for mc in (None, 0.2):
        fast = digit_confidence(mul, prompts, mc_dropout=mc, mc_samples=2, batch_size=10, progress=False)
        literal = digit_confidence(mul, prompts, mc_dropout=mc, mc_samples=2, engine="literal", batch_size=7,
                                   progress=False)
        np.testing.assert_allclose(_records(fast), _records(literal), atol=1e-6)
        np.testing.assert_array_equal(fast.records.extras["decoded"], literal.records.extras["decoded"])


def test_mc_dropout_is_seeded_shared_by_both_decodings_and_zero_is_no_dropout(mul, mul_prompts, mul_result):
    prompts = mul_prompts[:24]
    plain = digit_confidence(mul, prompts, progress=False)
    zero = digit_confidence(mul, prompts, mc_dropout=0.0, mc_samples=2, progress=False)
    np.testing.assert_allclose(_records(zero), _records(plain), atol=1e-6)
    np.testing.assert_allclose(zero.extras["mc_std"].values, 0, atol=1e-9)
    np.testing.assert_allclose(zero.extras["mc_std_prompt"].values, 0, atol=1e-6)
    # one pass, literal engine: where the free prefix is right both decodings ran under one mask
    one = digit_confidence(mul, prompts, mc_dropout=0.3, mc_samples=1, engine="literal", seed=3, progress=False)
    rec = _records(one)
    true, decoded = one.records.extras["true_token"].values, one.records.extras["decoded"].values
    right = np.cumprod(np.c_[np.ones(len(true), bool), decoded[:, :-1] == true[:, :-1]], axis=1).astype(bool)
    np.testing.assert_allclose(rec[..., :3][right], rec[..., 3:][right], atol=1e-6)
    assert not np.allclose(rec, _records(plain), atol=1e-3)  # p = 0.3 does change the model
    again = digit_confidence(mul, prompts, mc_dropout=0.3, mc_samples=1, engine="literal", seed=3, progress=False)
    np.testing.assert_array_equal(_records(again), rec)
    other = digit_confidence(mul, prompts, mc_dropout=0.3, mc_samples=1, engine="literal", seed=4, progress=False)
    assert not np.array_equal(_records(other), rec)
    assert np.isnan(one.extras["mc_std"]).all() and np.isnan(one.extras["mc_std_prompt"]).all()


def test_mc_dropout_spread_is_the_spread_of_the_passes(mul, mul_prompts):
    """Pass 0 of two is the one pass of ``mc_samples=1`` (masks are keyed by pass), so pass 1 is
    known, and with it both standard deviations over the passes."""
    prompts = mul_prompts[:24]
    first = digit_confidence(mul, prompts, mc_dropout=0.2, mc_samples=1, progress=False)
    both = digit_confidence(mul, prompts, mc_dropout=0.2, mc_samples=2, progress=False)
    x0 = first.records.values.sel(metric="confidence_free").values
    x1 = 2 * both.records.values.sel(metric="confidence_free").values - x0
    std = both.extras["mc_std"].sel(metric="confidence_free").values
    np.testing.assert_allclose(std, np.abs(x0.mean(0) - x1.mean(0)) / np.sqrt(2), atol=1e-9)
    per_prompt = both.extras["mc_std_prompt"].sel(metric="confidence_free").values
    np.testing.assert_allclose(per_prompt, (np.abs(x0 - x1) / np.sqrt(2)).mean(0), atol=1e-7)
    assert (per_prompt > std).any()  # one prompt moves more than the mean over prompts


# ---- planted truth: a model whose per-position probabilities are set by construction --------------

PLANTED = TaskSpec(operation="add", digits=2, format="fixed", n=60, seed=2)
TOKEN = {t: i for i, t in enumerate(DIGIT_VOCAB)}
DIGITS = [TOKEN[str(d)] for d in range(10)]


def _knows(a: int) -> bool:
    """The planted model knows the first digit of ``a + b`` when a's tens digit is even."""
    return (a // 10) % 2 == 0


def _planted_probs(true: str, prefix: str, a: int) -> dict[int, float]:
    """The next-digit distribution after ``prefix`` of the answer ``true`` (3 digits, MSD first).

    First digit: 0.9 on the true digit when the model knows it, else 0.6 on the next digit
    (wrong) and 0.2 on the true one. Later digits: 0.8 then 0.7 on the true digit when the
    prefix so far is right, else 0.3 on a wrong digit. The rest is spread evenly over the others.
    """
    i = len(prefix)
    d = int(true[i])
    if i == 0:
        peak = {d: 0.9} if _knows(a) else {(d + 1) % 10: 0.6, d: 0.2}
    elif prefix == true[:i]:
        peak = {d: (0.8, 0.7)[i - 1]}
    else:
        peak = {(d + 1) % 10: 0.3}
    rest = (1 - sum(peak.values())) / (10 - len(peak))
    return {digit: peak.get(digit, rest) for digit in range(10)}


class PlantedBackend(Backend):
    """Logits from :func:`_planted_probs` at every answer position; hooks are not supported."""

    name = "planted"

    def __init__(self):
        self.tokenizer = digit_tokenizer()
        self.shape = ModelShape(n_layers=1, n_heads=1, d_model=4, d_head=4, d_mlp=4, d_vocab=len(DIGIT_VOCAB),
                                n_ctx=32)
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.calls = 0

    def run(self, tokens: torch.Tensor, hooks: Mapping[Site, HookFn], *, grad: bool = False) -> torch.Tensor:
        assert not hooks
        self.calls += 1
        logits = torch.zeros(*tokens.shape, len(DIGIT_VOCAB))
        for row, ids in enumerate(tokens.tolist()):
            text = "".join(DIGIT_VOCAB[i] for i in ids)
            eq = text.index("=")
            a, b = (int(x) for x in text[:eq].split("+"))
            true = f"{a + b:03d}"
            for pos in range(eq, min(len(ids), eq + 3)):
                probs = torch.zeros(len(DIGIT_VOCAB))
                for digit, p in _planted_probs(true, text[eq + 1:pos + 1], a).items():
                    probs[DIGITS[digit]] = p
                logits[row, pos] = probs.log()
        return logits

    def weights(self):
        raise NotImplementedError

    def final_norm(self, resid):
        raise NotImplementedError

    def module(self):
        return torch.nn.Linear(1, 1)


@pytest.fixture(scope="module")
def planted():
    return Model(PlantedBackend(), name="planted", spec="planted")


def test_planted_model_gives_the_planted_numbers(planted):
    prompts = generate(PLANTED)
    res = digit_confidence(planted, prompts, progress=False)
    k = np.mean([_knows(a) for a in prompts.frame["operand_a"]])
    assert 0.2 < k < 0.8
    wrong_p_true = 0.7 / 9
    expected = {  # (position, metric): value, from the construction
        (0, "confidence_free"): 0.9 * k + 0.6 * (1 - k), (0, "confidence_forced"): 0.9 * k + 0.6 * (1 - k),
        (0, "accuracy_free"): k, (0, "accuracy_forced"): k,
        (0, "p_true_free"): 0.9 * k + 0.2 * (1 - k), (0, "p_true_forced"): 0.9 * k + 0.2 * (1 - k),
        (1, "confidence_free"): 0.8 * k + 0.3 * (1 - k), (1, "confidence_forced"): 0.8,
        (1, "accuracy_free"): k, (1, "accuracy_forced"): 1.0,
        (1, "p_true_free"): 0.8 * k + wrong_p_true * (1 - k), (1, "p_true_forced"): 0.8,
        (2, "confidence_free"): 0.7 * k + 0.3 * (1 - k), (2, "confidence_forced"): 0.7,
        (2, "accuracy_free"): k, (2, "accuracy_forced"): 1.0,
        (2, "confidence_diff"): 0.7 - (0.7 * k + 0.3 * (1 - k)), (0, "confidence_diff"): 0.0,
    }
    for (digit, metric), value in expected.items():
        assert float(res.values.sel(digit=digit, metric=metric)) == pytest.approx(value, abs=1e-6), (digit, metric)
    assert list(res.values.coords["digit_place"].values) == ["10^2", "10^1", "10^0"]
    assert list(res.values.coords["digit_role"].values) == ["most significant", "middle", "least significant"]
    assert res.order == "most significant first"
    assert res.summary()["least_significant"]["confidence_forced"] == pytest.approx(0.7)
    # per prompt: a prompt whose first digit the model does not know is wrong everywhere when free
    knows = np.array([_knows(a) for a in prompts.frame["operand_a"]])
    correct_free = res.records.records("correct_free").values
    np.testing.assert_array_equal(correct_free, np.repeat(knows[:, None], 3, axis=1).astype(float))
    # the interval is a bootstrap over prompts: it holds the mean, and is zero-width where every prompt agrees
    low, high = res.extras["ci_low"], res.extras["ci_high"]
    assert bool(((low <= res.values + 1e-12) & (res.values <= high + 1e-12)).all())
    width = high.sel(digit=1, metric="confidence_forced") - low.sel(digit=1, metric="confidence_forced")
    assert float(width) == pytest.approx(0, abs=1e-12)


def test_intervals_over_seeds_are_the_t_interval_of_the_per_seed_means(planted):
    seeds = (0, 1, 2, 3)
    res = digit_confidence(planted, PLANTED, seeds=seeds, progress=False)
    singles = [digit_confidence(planted, TaskSpec(**{**PLANTED.model_dump(), "seed": s}), progress=False).values
               for s in seeds]
    means = np.stack([s.values for s in singles])
    np.testing.assert_allclose(res.values.values, means.mean(0), atol=1e-12)
    half = stats.t.ppf(0.975, 3) * means.std(0, ddof=1) / 2
    np.testing.assert_allclose(res.extras["ci_high"].values, means.mean(0) + half, atol=1e-12)
    assert res.meta.extra["n_prompts"] == [60] * 4
    assert list(np.unique(res.records.values.coords["seed"].values)) == list(seeds)
    # a PromptSet is bootstrapped instead: its own mean, and the model runs once
    prompts = generate(PLANTED)
    calls = planted.backend.calls
    boot = digit_confidence(planted, prompts, seeds=range(50), progress=False)
    assert planted.backend.calls - calls == 3  # one teacher-forced pass, two decoding steps
    np.testing.assert_allclose(boot.values, digit_confidence(planted, prompts, progress=False).values)
    assert "one per seed" in boot.meta.extra["interval"]


# ---- both backends ---------------------------------------------------------------------------------


def test_backends_agree_on_zoo_models(mul, mul_nn, mul_prompts, mul_result):
    nn = digit_confidence(mul_nn, mul_prompts, batch_size=16, progress=False)
    np.testing.assert_allclose(_records(nn), _records(mul_result), atol=2e-5)
    prompts = mul_prompts[:16]
    tl_mc = digit_confidence(mul, prompts, mc_dropout=0.1, mc_samples=2, progress=False)
    nn_mc = digit_confidence(mul_nn, prompts, mc_dropout=0.1, mc_samples=2, progress=False)
    np.testing.assert_allclose(_records(tl_mc), _records(nn_mc), atol=2e-5)
    np.testing.assert_allclose(tl_mc.extras["mc_std"], nn_mc.extras["mc_std"], atol=2e-5)
    add = generate(TaskSpec(operation="add", digits=5, format="fixed", n=40, seed=1))
    tl = digit_confidence(load_model("zoo:add-5d"), add, progress=False)
    nn = digit_confidence(load_model("zoo:add-5d", backend="nnsight"), add, progress=False)
    np.testing.assert_allclose(_records(tl), _records(nn), atol=2e-5)
    assert tl.order == "most significant first" and tl.values.sizes == {"digit": 6, "metric": 9}
    assert float(tl.values.sel(metric="accuracy_free").min()) > 0.95  # add-5d is right: free = forced


# ---- tokens of several digits ------------------------------------------------------------------------


def _pair_model(folder):
    """A tiny random GPT-2 whose tokenizer writes digits in pairs ("0579" -> "05", "79")."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = [f"{i:02d}" for i in range(100)] + [str(i) for i in range(10)] + ["+", "=", "<pad>", "<bos>"]
    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(vocab)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\d\d|\d|[^\d\s]"), "isolated")
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(vocab), n_positions=16, n_embd=32, n_layer=1, n_head=2, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0)
    hf = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        hf.lm_head.weight.mul_(30)  # peaked distributions, so that argmaxes are not near-ties
    hf.save_pretrained(folder, safe_serialization=True)
    hf_tok.save_pretrained(folder)
    return folder


def test_tokens_of_several_digits_are_positions_and_the_result_says_so(tmp_path_factory):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    folder = _pair_model(tmp_path_factory.mktemp("pairs"))
    prompts = generate(TaskSpec(operation="add", digits=3, format="fixed", n=12, seed=0))
    res = digit_confidence(load_model(str(folder)), prompts, progress=False)
    assert list(res.values.coords["digit_place"].values) == ["10^3..10^2", "10^1..10^0"]
    assert list(res.values.coords["digit_role"].values) == ["most significant", "least significant"]
    assert "several digits" in res.meta.extra["positions"]
    hf = GPT2LMHeadModel.from_pretrained(folder, use_safetensors=True).eval()
    records, decoded = literal_oracle(hf, AutoTokenizer.from_pretrained(folder), prompts)
    np.testing.assert_allclose(_records(res), records, atol=2e-5)
    np.testing.assert_array_equal(res.records.extras["decoded"].values, decoded)


@pytest.mark.parametrize("fmt, places, roles", [
    ("fixed", ["sign", "10^1", "10^0"], ["sign", "most significant", "least significant"]),
    ("fixed_reversed", ["sign", "10^0", "10^1"], ["sign", "least significant", "most significant"]),
])
def test_a_sign_is_its_own_position_and_places_follow_the_format(tiny_hf_dirs, fmt, places, roles):
    model = load_model(str(tiny_hf_dirs["llama"]))
    prompts = generate(TaskSpec(operation="sub", digits=2, format=fmt, n=16, seed=1))
    assert {a[0] for a in prompts.answers} == {"+", "-"}
    res = digit_confidence(model, prompts, progress=False)
    assert list(res.values.coords["digit_place"].values) == places
    assert list(res.values.coords["digit_role"].values) == roles
    assert res.meta.extra["positions"] == "answer tokens, one digit each"
    assert res.order == ("most significant first" if fmt == "fixed" else "least significant first")


# ---- the result, the pipeline step and bad input -------------------------------------------------------


def test_plot_shows_free_and_forced_with_error_bars(mul_result):
    fig = mul_result.plot()
    names = {t.name for t in fig.data}
    assert {"free-running", "teacher-forced"} <= names
    shown = [t for t in fig.data if t.visible is not False and t.visible != "legendonly"]
    assert len(shown) == 4 and all(t.error_y.array is not None for t in shown)
    table = mul_result.table()
    assert list(table.columns[3:6]) == ["confidence_free", "confidence_forced", "confidence_diff"]
    assert mul_result.summary()["most_significant"]["accuracy_forced"] == float(
        mul_result.by_role("most significant")["accuracy_forced"])
    assert mul_result.headline().startswith("most significant digit confidence ")


def test_pipeline_step_draws_a_prompt_set_per_seed(mul):
    spec = get_method("digit_confidence")
    task = TaskSpec(operation="mul", digits=3, format="fixed_reversed", n=10, seed=0)
    ctx = RunContext(model=mul, spec=task, prompts=generate(task), progress=False)
    spec.precheck(ctx, {"seeds": [0, 1]})
    res = spec.call(ctx, {"seeds": [0, 1]})
    assert res.meta.extra["n_prompts"] == [10, 10] and "t-interval" in res.meta.extra["interval"]
    with pytest.raises(ConfigError, match="seeds is empty"):
        spec.validate_options({"seeds": []})
    with pytest.raises(ConfigError, match="mc_dropout"):
        spec.validate_options({"mc_dropout": 1.0})


@pytest.mark.parametrize("kwargs, error, match", [
    ({"mc_samples": 0}, MethodError, "mc_samples must be an int >= 1"),
    ({"mc_dropout": 1.0}, MethodError, r"mc_dropout must be a probability in \[0, 1\)"),
    ({"mc_dropout": -0.1}, MethodError, "mc_dropout must be a probability"),
    ({"seeds": ()}, MethodError, "seeds is empty"),
    ({"seeds": (1, 1)}, MethodError, "repeat a seed"),
    ({"seeds": (0,)}, MethodError, "bootstraps a PromptSet once"),
    ({"seeds": "012"}, MethodError, "sequence of ints"),
    ({"engine": "exact"}, MethodError, "engine must be"),
    ({"mc_sites": "heads"}, MethodError, "mc_sites must be one of"),
    ({"prompts": ["12*34="]}, MethodError, "PromptSet or a TaskSpec"),
    ({"prompts": TaskSpec(operation="mul", digits=3, n=20)}, TokenizationError, "unequal lengths"),
])
def test_bad_input_is_refused_before_any_forward_pass(mul, mul_prompts, monkeypatch, kwargs, error, match):
    calls = []
    monkeypatch.setattr(mul.backend, "run", lambda *a, **k: calls.append(1))
    kwargs = dict(kwargs)
    prompts = kwargs.pop("prompts", mul_prompts)
    with pytest.raises(error, match=match) as info:
        digit_confidence(mul, prompts, progress=False, **kwargs)
    assert isinstance(info.value, ArithInterpError) and not calls


def test_single_token_answers_have_one_position_and_are_refused(monkeypatch):
    model = load_model("zoo:add-2d-tok", backend="nnsight")
    calls = []
    monkeypatch.setattr(model.backend, "run", lambda *a, **k: calls.append(1))
    prompts = generate(TaskSpec(operation="add", operand_range=(0, 99), format="plain", n=8))
    with pytest.raises(MethodError, match="only one answer position"):
        digit_confidence(model, prompts, progress=False)
    assert not calls
