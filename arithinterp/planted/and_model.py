"""The AND model: a one-layer GPT-2 that adds two digits with three components together.

The weights are written by hand so that it adds two digits, ``a+b=`` followed by a
two-digit answer (``format="fixed"``: tens at position 3, units at position 4, teacher
forced). Every residual feature is written as a ``(+v, -v)`` pair of dims, so the
residual stream has mean 0 and LayerNorm only rescales it; at the answer positions
the norm is the same for every prompt, so the rescaling is a known constant that
the weights divide out.

Residual dims (d_model = 128):

* ``TOK``: one-hot token; ``POS``: one-hot position; ``CONST``: 1 everywhere.
* ``A`` / ``B``: one-hot of operand a / b, written by the copying heads.
* ``DEC``: two scalar dims written by the decoy heads.
* ``OUT``: one-hot answer digit, read by the (untied) unembedding.

Layer 0 attention (query bias only; the key reads the position, so each head
attends with weight exactly 1 to one fixed position from every later query):

* **L0H0** attends to position 0 (``a``) and copies its digit into ``A``;
* **L0H1** attends to position 2 (``b``) and copies its digit into ``B``;
* L0H2 / L0H3 are decoys: they attend to ``+`` / ``=`` (the same in every prompt)
  and write into ``DEC``, which nothing reads.

Layer 0 MLP (ReLU):

* neurons ``10a + b`` (0..99) fire only at position 4 when ``A = a`` and ``B = b``
  and write the units digit ``(a + b) % 10`` into ``OUT``;
* neuron **100 is the carry neuron**: at position 3 its pre-activation is
  ``K (a + b - 9.5)``, so it fires exactly when ``a + b >= 10``, and it writes
  the tens digit ``1`` into ``OUT`` (outweighing neuron 101, which writes ``0``
  at position 3 for every prompt);
* neurons 102..127 are dead.

So the causal structure is known: with ``random`` pairs (both operands change),
L0H0, L0H1 and MLP0 carry the whole effect and the decoys none.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from arithinterp.zoo.tokenizers import DIGIT_VOCAB, digit_tokenizer

__all__ = ["CARRY", "N_INNER", "build_and_model"]

D, N_POS, N_HEAD, D_HEAD, N_INNER = 128, 8, 4, 32, 128
TOK, POS, A, B, DEC, OUT, CONST = 0, 40, 56, 76, 96, 100, 120
WIDTH = {TOK: 20, POS: 8, A: 10, B: 10, OUT: 10}  # the minus half of a pair sits WIDTH dims later
K, Q_BIG = 50.0, 500.0
EPS = 1e-5
CARRY = 100
HEAD_TARGET = {0: 0, 1: 2, 2: 1, 3: 3}  # head -> the position it attends to


def _scale(norm2: float) -> float:
    """LayerNorm's factor on a mean-zero vector of squared norm ``norm2`` (weight 1, bias 0)."""
    return 1.0 / math.sqrt(norm2 / D + EPS)


def _pair(vec: torch.Tensor, base: int, i: int, value: float = 1.0) -> None:
    vec[base + i] += value
    vec[base + WIDTH[base] + i] -= value


def _attention(sd: dict[str, torch.Tensor], c1: float) -> None:
    w_qkv, b_qkv = sd["transformer.h.0.attn.c_attn.weight"], sd["transformer.h.0.attn.c_attn.bias"]
    w_o = sd["transformer.h.0.attn.c_proj.weight"]
    for h, target in HEAD_TARGET.items():
        q, k, v = h * D_HEAD, D + h * D_HEAD, 2 * D + h * D_HEAD
        b_qkv[q] = Q_BIG
        w_qkv[POS + target, k] = 1.0
        n_copy = 10 if h < 2 else len(DIGIT_VOCAB)
        for j in range(n_copy):
            w_qkv[TOK + j, v + j] = 1.0 / c1  # z = one-hot of the attended token
            if h == 0:
                _pair(w_o[h * D_HEAD + j], A, j)
            elif h == 1:
                _pair(w_o[h * D_HEAD + j], B, j)
            else:
                w_o[h * D_HEAD + j, DEC + 2 * (h - 2)] = 1.0
                w_o[h * D_HEAD + j, DEC + 2 * (h - 2) + 1] = -1.0


def _mlp(sd: dict[str, torch.Tensor], c2: float) -> None:
    w_in, b_in = sd["transformer.h.0.mlp.c_fc.weight"], sd["transformer.h.0.mlp.c_fc.bias"]
    w_out = sd["transformer.h.0.mlp.c_proj.weight"]
    r = 1.0 / c2  # undo ln_2's scale
    for a in range(10):
        for b in range(10):
            n = 10 * a + b
            w_in[A + a, n] = w_in[B + b, n] = w_in[POS + 4, n] = K * r
            b_in[n] = -2.5 * K
            _pair(w_out[n], OUT, (a + b) % 10, 10.0 / (0.5 * K))
    for j in range(10):
        w_in[A + j, CARRY] = w_in[B + j, CARRY] = K * r * j
    w_in[POS + 3, CARRY] = 20 * K * r
    b_in[CARRY] = -9.5 * K - 20 * K
    _pair(w_out[CARRY], OUT, 1, 10.0 / (0.5 * K))
    w_in[POS + 3, CARRY + 1] = K * r
    b_in[CARRY + 1] = -0.5 * K
    _pair(w_out[CARRY + 1], OUT, 0, 5.0 / (0.5 * K))


def build_and_model(path: Path) -> Path:
    """Write the AND model (weights, config, digit tokenizer) as a GPT-2 directory at ``path``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=len(DIGIT_VOCAB), n_positions=N_POS, n_embd=D, n_layer=1, n_head=N_HEAD,
                     n_inner=N_INNER, activation_function="relu", tie_word_embeddings=False,
                     layer_norm_epsilon=EPS, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=DIGIT_VOCAB.index("<bos>"), eos_token_id=DIGIT_VOCAB.index("<eos>"))
    hf = GPT2LMHeadModel(cfg)
    sd = {k: torch.zeros_like(v) for k, v in hf.state_dict().items()}
    for k in sd:
        if k.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            sd[k] = torch.ones_like(sd[k])
    for t in range(len(DIGIT_VOCAB)):
        _pair(sd["transformer.wte.weight"][t], TOK, t)
    for p in range(N_POS):
        _pair(sd["transformer.wpe.weight"][p], POS, p)
        sd["transformer.wpe.weight"][p, CONST] = 1.0
        sd["transformer.wpe.weight"][p, CONST + 1] = -1.0
    # At the answer positions: token, position, const pairs (6); after attention also
    # A, B and the two decoys (another 8).
    _attention(sd, _scale(6.0))
    _mlp(sd, _scale(14.0))
    for t in range(10):
        sd["lm_head.weight"][t, OUT + t] = 1.0
        sd["lm_head.weight"][t, OUT + WIDTH[OUT] + t] = -1.0
        sd["lm_head.weight"][t, CONST] = 0.1  # digits beat other tokens; the max logit stays > 0
    hf.load_state_dict(sd)
    path = Path(path)
    hf.save_pretrained(path, safe_serialization=True)
    digit_tokenizer().save_pretrained(path)
    return path
