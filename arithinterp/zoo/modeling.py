"""Build zoo models (HF GPT-2) and the exact last-position forward used to train
one-layer models fast."""

from __future__ import annotations

import math

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from arithinterp.zoo.data import TaskFormat
from arithinterp.zoo.recipe import CENTRE_EPS, Recipe
from arithinterp.zoo.tokenizers import digit_tokenizer, number_tokenizer

__all__ = ["build_config", "build_model", "build_tokenizer_for", "lean_last_logits"]


def build_tokenizer_for(fmt: TaskFormat) -> PreTrainedTokenizerFast:
    """The tokenizer a task is written in."""
    if fmt.digit_level:
        return digit_tokenizer()
    return number_tokenizer(fmt.n_numbers)


def build_config(recipe: Recipe, tokenizer: PreTrainedTokenizerFast) -> GPT2Config:
    """A GPT-2 config with every dropout 0 and eager attention."""
    arch = recipe.architecture
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=arch.n_positions,
        n_embd=arch.n_embd,
        n_layer=arch.n_layer,
        n_head=arch.n_head,
        n_inner=arch.n_inner,
        activation_function=arch.activation,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        tie_word_embeddings=arch.tie,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=False,
        attn_implementation="eager",
        layer_norm_epsilon=CENTRE_EPS if arch.norm == "centre" else 1e-5,
        initializer_range=arch.init_std if arch.init_std is not None else 0.02,
    )


def build_model(recipe: Recipe, tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    """A freshly initialised model (seed the torch RNG first for reproducibility)."""
    model = GPT2LMHeadModel(build_config(recipe, tokenizer))
    model.config._attn_implementation = "eager"
    if recipe.architecture.norm == "centre":
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.LayerNorm):
                    module.weight.fill_(math.sqrt(CENTRE_EPS))
    return model


def lean_last_logits(model: GPT2LMHeadModel, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits at the last position of a **one-layer** GPT-2, computed exactly but
    with queries, MLP and unembedding only at that position.

    Keys and values are still used at every position (the last query reads
    them all, so no causal mask is needed). Uses the model's own modules and
    parameters, so gradients flow into the HF model. Shape ``(batch, vocab)``.
    """
    cfg = model.config
    if cfg.n_layer != 1:
        raise ValueError(f"lean_last_logits is exact only for 1 layer, model has {cfg.n_layer}")
    tr = model.transformer
    batch, seq = input_ids.shape
    d, nh = cfg.n_embd, cfg.n_head
    hd = d // nh
    block = tr.h[0]
    # Everything before attention depends only on (token, position), so it is
    # computed once per vocabulary entry and gathered: exact, and far cheaper
    # than per-example when the batch is much larger than the vocabulary.
    emb = tr.wte.weight[None] + tr.wpe.weight[:seq, None]  # (pos, vocab, d)
    h = block.ln_1(emb)
    w, b = block.attn.c_attn.weight, block.attn.c_attn.bias  # Conv1D: y = x @ w + b
    kv_table = h @ w[:, d:] + b[d:]
    q_table = h[-1] @ w[:, :d] + b[:d]
    pos = torch.arange(seq, device=input_ids.device)
    k, v = kv_table[pos[None], input_ids].view(batch, seq, 2, nh, hd).unbind(2)
    last = input_ids[:, -1]
    q = q_table[last].view(batch, nh, hd)
    scores = torch.einsum("bhe,bthe->bht", q, k) / math.sqrt(hd)
    pattern = scores.softmax(dim=-1)
    z = torch.einsum("bht,bthe->bhe", pattern, v).reshape(batch, d)
    resid = emb[-1][last] + block.attn.c_proj(z)
    resid = resid + block.mlp(block.ln_2(resid))
    return model.lm_head(tr.ln_f(resid))
