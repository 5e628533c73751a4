"""A literal GPT-2 forward pass over HF weights, written out step by step.

Every site of arithinterp is a named intermediate here, so a test can read or
replace any of them and compare with what a backend does. It shares no code
with the backends.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gpt2_forward(hf_model, tokens: torch.Tensor, hooks=None):
    """Return (logits, acts) where acts maps (kind, layer) to canonical activations.

    ``hooks`` maps (kind, layer) to a function activation -> activation.
    """
    hooks = hooks or {}
    acts = {}

    def at(kind, layer, x):
        fn = hooks.get((kind, layer))
        if fn is not None:
            x = fn(x)
        acts[(kind, layer)] = x
        return x

    tr = hf_model.transformer
    cfg = hf_model.config
    n_head = cfg.n_head
    d_head = cfg.n_embd // n_head
    b, p = tokens.shape
    tok_emb = at("embed", None, tr.wte.weight[tokens])
    x = tok_emb + tr.wpe.weight[torch.arange(p)]
    mask = torch.tril(torch.ones(p, p, dtype=torch.bool))
    for layer, block in enumerate(tr.h):
        x = at("resid_pre", layer, x)
        h = block.ln_1(x)
        qkv = h @ block.attn.c_attn.weight + block.attn.c_attn.bias
        q, k, v = qkv.split(cfg.n_embd, dim=-1)
        q = at("q", layer, q.reshape(b, p, n_head, d_head))
        k = at("k", layer, k.reshape(b, p, n_head, d_head))
        v = at("v", layer, v.reshape(b, p, n_head, d_head))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d_head)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        pattern = at("pattern", layer, F.softmax(scores, dim=-1))
        z = at("attn_head", layer, torch.einsum("bhqk,bkhd->bqhd", pattern, v))
        attn_out = z.reshape(b, p, cfg.n_embd) @ block.attn.c_proj.weight + block.attn.c_proj.bias
        attn_out = at("attn_out", layer, attn_out)
        mid = at("resid_mid", layer, x + attn_out)
        h = block.ln_2(mid)
        post = at("mlp_post", layer, block.mlp.act(h @ block.mlp.c_fc.weight + block.mlp.c_fc.bias))
        mlp_out = at("mlp_out", layer, post @ block.mlp.c_proj.weight + block.mlp.c_proj.bias)
        x = at("resid_post", layer, mid + mlp_out)
    final = at("final_resid", None, tr.ln_f(x))
    return hf_model.lm_head(final), acts
