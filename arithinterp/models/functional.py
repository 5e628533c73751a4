"""A functional transformer over a Hugging Face model's own weights.

Fast methods (the patching engine) need what no hook API offers: start a
forward pass at block ``l`` and position ``p`` from cached activations,
reuse cached keys and values for earlier positions, and stop at the
positions a metric reads. This module computes a GPT-2-family or
Llama-family forward pass step by step from the weights of the loaded HF
module, so both backends share it. What differs between families (module
paths, fused or separate q/k/v, norms, positions, gating) comes from the one
family record in :mod:`arithinterp.models.backends.hf_arch`. Tests check it against the backend's own
logits and cached activations; models of other families fall back to the
slow, literal path of the method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from arithinterp.errors import ModelLoadError
from arithinterp.models.backends.hf_arch import (
    HFArchitecture,
    architecture_for,
    in_out,
    model_shape,
)

_GELU_TANH = {"gelu_new", "gelu_pytorch_tanh", "gelu_fast"}


def _activation(name: str):
    if name in _GELU_TANH:
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu
    if name == "relu":
        return F.relu
    if name in ("silu", "swish"):
        return F.silu
    raise ModelLoadError(f"activation {name!r} is not supported by the functional forward")


def _norm_weights(module: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A norm's (weight, bias); RMSNorm has no bias."""
    return module.weight, getattr(module, "bias", None)


@dataclass
class KV:
    """Keys (after rotary) and values of one block: ``[batch, pos, head, d_head]``."""

    k: torch.Tensor
    v: torch.Tensor


class FunctionalTransformer:
    """Step-by-step forward pass of a GPT-2 or Llama family HF causal LM.

    All weights are views of the HF module's parameters, in
    ``[in, out]`` layout; nothing is copied.
    """

    def __init__(self, hf_model: Any):
        cfg = hf_model.config
        arch = architecture_for(cfg, functional=True)
        if getattr(cfg, "scale_attn_by_inverse_layer_idx", False) or getattr(cfg, "reorder_and_upcast_attn", False):
            raise ModelLoadError("GPT-2 variants with per-layer attention scaling are not supported")
        shape = model_shape(cfg, arch)
        self.model_type = cfg.model_type
        self.hf_model = hf_model
        self.n_heads = shape.n_heads
        self.n_kv_heads = shape.n_kv_heads
        self.d_model = shape.d_model
        self.d_head = shape.d_head
        self.norm = shape.normalization
        self.eps = getattr(cfg, arch.eps)
        self.act = _activation(shape.act_fn)
        self.W_E = hf_model.get_input_embeddings().weight
        self.W_pos = None if arch.pos_embed is None else hf_model.get_submodule(arch.pos_embed).weight
        self.rotary = None if arch.rotary is None else hf_model.get_submodule(arch.rotary)
        self.scale = 1.0 / math.sqrt(self.d_head) if getattr(cfg, "scale_attn_weights", True) else 1.0
        layers = hf_model.get_submodule(arch.layers)
        self.blocks = [self._block(arch, block) for block in layers]
        self.n_layers = len(self.blocks)
        self.ln_final = _norm_weights(hf_model.get_submodule(arch.final_norm))
        unembed = hf_model.get_output_embeddings()
        self.W_U = unembed.weight.T
        self.b_U = getattr(unembed, "bias", None)

    def _block(self, arch: HFArchitecture, block: Any) -> dict:
        """One block's weights as ``[in, out]`` views, named as in TransformerLens."""

        def lin(path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
            m = block.get_submodule(path)
            return in_out(m.weight, arch.conv1d), getattr(m, "bias", None)

        if arch.qkv_layout == "separate":
            (W_Q, b_Q), (W_K, b_K), (W_V, b_V) = (lin(path) for path in arch.qkv)
        else:  # one fused [q | k | v] projection
            W, b = lin(arch.qkv[0])
            sizes = [self.n_heads * self.d_head] + [self.n_kv_heads * self.d_head] * 2
            W_Q, W_K, W_V = W.split(sizes, dim=-1)
            b_Q, b_K, b_V = (None,) * 3 if b is None else b.split(sizes)
        W_O, b_O = lin(arch.attn_proj)
        W_in, b_in = lin(arch.mlp_in)
        W_out, b_out = lin(arch.mlp_proj)
        return {
            "ln1": _norm_weights(block.get_submodule(arch.ln1)),
            "W_Q": W_Q, "W_K": W_K, "W_V": W_V, "b_Q": b_Q, "b_K": b_K, "b_V": b_V,
            "W_O": W_O, "b_O": b_O,
            "ln2": _norm_weights(block.get_submodule(arch.ln2)),
            "W_in": W_in, "b_in": b_in,
            "W_gate": None if arch.mlp_gate is None else lin(arch.mlp_gate)[0],
            "W_out": W_out, "b_out": b_out,
        }  # fmt: skip

    # -- pieces ------------------------------------------------------------
    def _norm(self, x: torch.Tensor, wb: tuple) -> torch.Tensor:
        w, b = wb
        if self.norm == "LN":
            return F.layer_norm(x, (x.shape[-1],), w, b, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return w * x32.to(x.dtype)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[batch, pos, d_model]`` (the ``embed`` site)."""
        return self.W_E[tokens]

    def resid0(self, tokens: torch.Tensor, embed: torch.Tensor | None = None) -> torch.Tensor:
        """The residual stream entering block 0."""
        x = self.embed(tokens) if embed is None else embed
        if self.W_pos is not None:
            x = x + self.W_pos[: tokens.shape[1]]
        return x

    def qkv(self, layer: int, resid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values ``[batch, pos, head, d_head]`` before rotary."""
        blk = self.blocks[layer]
        x = self._norm(resid, blk["ln1"])
        b, p, _ = x.shape

        def proj(W, bias, heads):
            out = x @ W
            if bias is not None:
                out = out + bias
            return out.view(b, p, heads, self.d_head)

        return (
            proj(blk["W_Q"], blk["b_Q"], self.n_heads),
            proj(blk["W_K"], blk["b_K"], self.n_kv_heads),
            proj(blk["W_V"], blk["b_V"], self.n_kv_heads),
        )

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Apply rotary embeddings (identity for learned positions)."""
        if self.rotary is None:
            return x
        cos, sin = self.rotary(x, positions.view(1, -1))  # [1, pos, d_head]
        cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def pattern(self, q: torch.Tensor, k: torch.Tensor, q_start: int) -> torch.Tensor:
        """Attention pattern ``[batch, head, q_pos, k_pos]`` for queries at ``q_start...``."""
        return self.pattern_at(q, k, torch.arange(q_start, q_start + q.shape[1], device=q.device))

    def pattern_at(self, q: torch.Tensor, k: torch.Tensor, q_positions: torch.Tensor) -> torch.Tensor:
        """Attention pattern for queries at the given absolute positions (keys from position 0)."""
        k = self._repeat_kv(k)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * self.scale
        k_idx = torch.arange(k.shape[1], device=q.device).view(1, -1)
        scores = scores.masked_fill(k_idx > q_positions.view(-1, 1), torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1)

    def _repeat_kv(self, x: torch.Tensor) -> torch.Tensor:
        if self.n_kv_heads == self.n_heads:
            return x
        return x.repeat_interleave(self.n_heads // self.n_kv_heads, dim=2)

    def z(self, pattern: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Head outputs ``[batch, q_pos, head, d_head]``."""
        return torch.einsum("bhqk,bkhd->bqhd", pattern, self._repeat_kv(v))

    def attn_out(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        blk = self.blocks[layer]
        out = z.flatten(-2) @ blk["W_O"]
        return out + blk["b_O"] if blk["b_O"] is not None else out

    def mlp_post(self, layer: int, resid_mid: torch.Tensor) -> torch.Tensor:
        blk = self.blocks[layer]
        x = self._norm(resid_mid, blk["ln2"])
        pre = x @ blk["W_in"]
        if blk["b_in"] is not None:
            pre = pre + blk["b_in"]
        if blk["W_gate"] is not None:
            return self.act(x @ blk["W_gate"]) * pre
        return self.act(pre)

    def mlp_out(self, layer: int, post: torch.Tensor) -> torch.Tensor:
        blk = self.blocks[layer]
        out = post @ blk["W_out"]
        return out + blk["b_out"] if blk["b_out"] is not None else out

    def W_O_heads(self, layer: int) -> torch.Tensor:
        """The output projection per head ``[head, d_head, d_model]``."""
        return self.blocks[layer]["W_O"].view(self.n_heads, self.d_head, self.d_model)

    def W_out(self, layer: int) -> torch.Tensor:
        return self.blocks[layer]["W_out"]

    def final_resid(self, resid: torch.Tensor) -> torch.Tensor:
        return self._norm(resid, self.ln_final)

    def unembed(self, final: torch.Tensor) -> torch.Tensor:
        logits = final @ self.W_U
        return logits + self.b_U if self.b_U is not None else logits

    # -- whole blocks --------------------------------------------------------
    def block(
        self, layer: int, resid: torch.Tensor, *, start: int = 0, past: KV | None = None
    ) -> tuple[torch.Tensor, KV]:
        """Run block ``layer`` on positions ``start...``, attending also to ``past`` keys/values.

        Returns ``resid_post`` for those positions and the keys/values of all positions.
        """
        q, k, v = self.qkv(layer, resid)
        positions = torch.arange(start, start + resid.shape[1], device=resid.device)
        q, k = self.rotate(q, positions), self.rotate(k, positions)
        if past is not None:
            k = torch.cat([past.k[:, :start], k], dim=1)
            v = torch.cat([past.v[:, :start], v], dim=1)
        z = self.z(self.pattern(q, k, start), v)
        mid = resid + self.attn_out(layer, z)
        post = mid + self.mlp_out(layer, self.mlp_post(layer, mid))
        return post, KV(k, v)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits of a plain forward pass (for checking against the backend)."""
        x = self.resid0(tokens)
        for layer in range(self.n_layers):
            x, _ = self.block(layer, x)
        return self.unembed(self.final_resid(x))
