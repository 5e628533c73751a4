"""Shared fixtures: tiny random HF models (GPT-2 and Llama architectures) with a
digit-level tokenizer, built from configs in seconds and saved to a temp dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

DIGIT_VOCAB = [str(i) for i in range(10)] + ["+", "-", "*", "/", "%", "=", " ", "<pad>", "<bos>", "<eos>"]


def digit_tokenizer():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(DIGIT_VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"\d|[^\d\s]"), "isolated")]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )


def build_tiny_hf(path: Path, arch: str, *, seed: int = 0, n_layer: int = 2) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    vocab = len(DIGIT_VOCAB)
    if arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=vocab, n_positions=32, n_embd=32, n_layer=n_layer, n_head=4,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            bos_token_id=DIGIT_VOCAB.index("<bos>"), eos_token_id=DIGIT_VOCAB.index("<eos>"),
        )
        model = GPT2LMHeadModel(cfg)
    elif arch == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab, max_position_embeddings=32, hidden_size=32, intermediate_size=64,
            num_hidden_layers=n_layer, num_attention_heads=4, num_key_value_heads=4,
            bos_token_id=DIGIT_VOCAB.index("<bos>"), eos_token_id=DIGIT_VOCAB.index("<eos>"),
        )
        model = LlamaForCausalLM(cfg)
    else:
        raise ValueError(arch)
    model.save_pretrained(path, safe_serialization=True)
    digit_tokenizer().save_pretrained(path)
    return path


def scaled_variant(source: Path, target: Path, *, scale: float = 25.0, zero_mlps: bool = False) -> Path:
    """A tiny random GPT-2 with its weight matrices scaled up (so its next-token distributions
    are far from uniform and interventions move them visibly) and, optionally, every MLP
    weight and bias zeroed (attention only)."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(source, use_safetensors=True)
    with torch.no_grad():
        for name, weight in hf.named_parameters():
            if zero_mlps and ".mlp." in name:
                weight.zero_()
            elif weight.ndim == 2:
                weight.mul_(scale)
    hf.save_pretrained(target, safe_serialization=True)
    digit_tokenizer().save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def tiny_hf_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: build_tiny_hf(root / arch, arch) for arch in ("gpt2", "llama")}


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def tiny_arch(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny_tokens() -> torch.Tensor:
    tok = digit_tokenizer()
    texts = ["12+34=46", "50+71=21", "99+99=98", "03+40=43"]
    return torch.tensor([tok(t)["input_ids"] for t in texts])


class CountingRun:
    """Wraps a backend's run and counts forward passes."""

    def __init__(self, run):
        self.run, self.calls = run, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.run(*args, **kwargs)


@pytest.fixture
def counted(model, monkeypatch):
    """Counts the forward passes of the test module's ``model`` fixture."""
    counter = CountingRun(model.backend.run)
    monkeypatch.setattr(model.backend, "run", counter)
    return counter


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """Run a module on one intra-op thread and restore the setting afterwards.

    Modules of many tiny forward passes or probe fits use it: on a shared
    2-core machine a second thread costs more in contention than it saves
    (measured 7-20x slower under load).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
