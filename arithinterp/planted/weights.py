"""Hand-set GPT-2 weights: a residual-stream layout and writers for heads, neurons and logits.

The construction trick (first used for the AND model of the circuit tests) makes every
computation exact despite LayerNorm:

* every residual **feature** is a block of ``width`` dims written as ``(+v, -v)`` pairs
  (dim ``base + i`` gets ``+v``, dim ``base + width + i`` gets ``-v``), so the residual
  stream has mean 0 at every position and LayerNorm (weight 1, bias 0) only rescales it;
* every written value is a unit one-hot (or a known constant), so at each position the
  squared norm is ``2 * units + 2 * ballast**2`` where ``units`` counts the unit pairs
  active there; the rescaling :meth:`Planter.scale` is a known constant that the reading
  weights divide out;
* a **ballast** pair of size :data:`BALLAST` sits at every position: when an ablation
  replaces a one-hot by a mean (smaller norm) the rescaling moves by a few percent only,
  so thresholds keep their margins under every ablation.

A head attends to one fixed position: its query is a large bias and its key reads the
one-hot position, so from every later position it puts weight 1 (to ``exp(-100)``) on
that position. Its value reads a feature there and its output writes another.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["BALLAST", "EPS", "Feature", "Planter"]

EPS = 1e-5
BALLAST = 6.0
Q_BIG = 500.0


@dataclass(frozen=True)
class Feature:
    """A block of residual dims: ``width`` plus dims at ``base``, their minus twins after them."""

    name: str
    base: int
    width: int

    def plus(self, i: int) -> int:
        return self.base + i

    def minus(self, i: int) -> int:
        return self.base + self.width + i


class Planter:
    """Zeroed GPT-2 weights plus writers that set them by hand (see the module docstring).

    Args:
        vocab: vocabulary size.
        n_layer: layers.
        token_index: token id -> index of the ``TOK`` one-hot (one unit pair per position).
        n_head: heads per layer (``d_head = d_model / n_head``).
        d_model: residual width.
        d_mlp: MLP width.
        n_pos: positions.
        ballast: size of the constant pair written at every position.
        bos: the tokenizer's BOS id (recorded in the config).
        eos: the tokenizer's EOS id.
    """

    def __init__(self, *, vocab: int, n_layer: int, token_index: Sequence[int], n_head: int = 4,
                 d_model: int = 128, d_mlp: int = 128, n_pos: int = 8, ballast: float = BALLAST,
                 bos: int | None = None, eos: int | None = None) -> None:
        from transformers import GPT2Config, GPT2LMHeadModel

        self.config = GPT2Config(
            vocab_size=vocab, n_positions=n_pos, n_embd=d_model, n_layer=n_layer, n_head=n_head, n_inner=d_mlp,
            activation_function="relu", tie_word_embeddings=False, layer_norm_epsilon=EPS,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=bos, eos_token_id=eos,
        )
        self._cls = GPT2LMHeadModel
        shapes = GPT2LMHeadModel(self.config).state_dict()
        self.sd = {k: torch.zeros_like(v) for k, v in shapes.items()}
        for k in self.sd:
            if k.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                self.sd[k] = torch.ones_like(self.sd[k])
        self.d_model, self.d_head, self.ballast = d_model, d_model // n_head, ballast
        self._next = 0
        self.const = self.feature("CONST", 1)
        self.tok = self.feature("TOK", max(token_index) + 1)
        self.pos = self.feature("POS", n_pos)
        wte, wpe = self.sd["transformer.wte.weight"], self.sd["transformer.wpe.weight"]
        for t, i in enumerate(token_index):
            self.write(wte[t], self.tok, i)
        for p in range(n_pos):
            self.write(wpe[p], self.pos, p)
            self.write(wpe[p], self.const, 0, ballast)

    # ---- layout ---------------------------------------------------------------------------

    def feature(self, name: str, width: int) -> Feature:
        """Allocate the next ``2 * width`` residual dims."""
        feat = Feature(name, self._next, width)
        self._next += 2 * width
        if self._next > self.d_model:
            raise ValueError(f"feature {name} does not fit: {self._next} dims of {self.d_model}")
        return feat

    @staticmethod
    def write(vec: torch.Tensor, feat: Feature, i: int, value: float = 1.0) -> None:
        vec[feat.plus(i)] += value
        vec[feat.minus(i)] -= value

    def scale(self, units: int) -> float:
        """LayerNorm's factor at a position holding ``units`` unit pairs and the ballast."""
        norm2 = 2.0 * units + 2.0 * self.ballast**2
        return 1.0 / math.sqrt(norm2 / self.d_model + EPS)

    # ---- writers --------------------------------------------------------------------------

    def head(self, layer: int, head: int, *, attend: int, read: Feature, write: Feature | None,
             units: int, indices: Iterable[int] | None = None, gain: float = 1.0) -> None:
        """Head ``layer``/``head`` attends to position ``attend`` and writes ``gain`` times the
        one-hot it reads there (``read`` index i -> ``write`` index i). ``units``: unit pairs at
        ``attend`` before this layer's attention (its LayerNorm factor is divided out)."""
        pre = f"transformer.h.{layer}.attn."
        w_qkv, b_qkv = self.sd[pre + "c_attn.weight"], self.sd[pre + "c_attn.bias"]
        w_o = self.sd[pre + "c_proj.weight"]
        d, dh = self.d_model, self.d_head
        q, k, v = head * dh, d + head * dh, 2 * d + head * dh
        b_qkv[q] = Q_BIG
        w_qkv[self.pos.plus(attend), k] = 1.0
        c = self.scale(units)
        for slot, i in enumerate(range(read.width) if indices is None else indices):
            if slot >= dh:
                raise ValueError(f"a head copies at most d_head={dh} values")
            w_qkv[read.plus(i), v + slot] = 1.0 / c
            if write is not None:
                self.write(w_o[head * dh + slot], write, i, gain)

    def neuron(self, layer: int, n: int, *, reads: Sequence[tuple[Feature, int, float]], bias: float,
               writes: Sequence[tuple[Feature, int, float]], units: int, activation: float = 1.0) -> None:
        """Neuron ``n`` of MLP ``layer``: pre-activation ``sum(w * x[feature, i]) + bias`` on the
        un-normalised residual (``units``: unit pairs at the position it works at), output
        ``value / activation`` per unit of activation into each written feature index."""
        pre = f"transformer.h.{layer}.mlp."
        w_in, b_in = self.sd[pre + "c_fc.weight"], self.sd[pre + "c_fc.bias"]
        w_out = self.sd[pre + "c_proj.weight"]
        r = 1.0 / self.scale(units)
        for feat, i, w in reads:
            w_in[feat.plus(i), n] += w * r
        b_in[n] = bias
        for feat, i, value in writes:
            self.write(w_out[n], feat, i, value / activation)

    def unembed(self, token: int, feat: Feature, i: int, *, gain: float = 1.0) -> None:
        """The logit of ``token`` reads ``feat[i]``."""
        w = self.sd["lm_head.weight"]
        w[token, feat.plus(i)] = gain
        w[token, feat.minus(i)] = -gain

    def logit_bias(self, token: int, value: float) -> None:
        """``token``'s logit gets ``value`` (times the final LayerNorm's factor) everywhere."""
        self.sd["lm_head.weight"][token, self.const.plus(0)] = value / self.ballast

    # ---- output ---------------------------------------------------------------------------

    def save(self, path: Path, tokenizer: Any) -> Path:
        hf = self._cls(self.config)
        hf.load_state_dict(self.sd)
        hf.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        return path
