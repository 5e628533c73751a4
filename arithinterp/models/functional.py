"""A functional transformer over a Hugging Face model's own weights.

Fast methods (the patching engine) need what no hook API offers: start a
forward pass at block ``l`` and position ``p`` from cached activations,
reuse cached keys and values for earlier positions, and stop at the
positions a metric reads. This module computes a GPT-2-family or
Llama-family forward pass step by step from the weights of the loaded HF
module, so both backends share it. Tests check it against the backend's own
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
        self.model_type = cfg.model_type
        self.hf_model = hf_model
        if cfg.model_type == "gpt2":
            self._init_gpt2(hf_model)
        elif cfg.model_type in ("llama", "mistral", "qwen2"):
            self._init_llama(hf_model)
        else:
            raise ModelLoadError(
                f"the functional forward supports gpt2, llama, mistral and qwen2 models, "
                f"not {cfg.model_type!r}"
            )
        self.n_layers = len(self.blocks)

    # -- construction ------------------------------------------------------
    def _init_gpt2(self, hf: Any) -> None:
        cfg = hf.config
        tr = hf.transformer
        self.n_heads = cfg.n_head
        self.n_kv_heads = cfg.n_head
        self.d_model = cfg.n_embd
        self.d_head = cfg.n_embd // cfg.n_head
        self.norm = "LN"
        self.eps = cfg.layer_norm_epsilon
        self.act = _activation(cfg.activation_function)
        self.W_E = tr.wte.weight
        self.W_pos = tr.wpe.weight
        self.rotary = None
        self.scale = 1.0 / math.sqrt(self.d_head) if cfg.scale_attn_weights else 1.0
        if getattr(cfg, "scale_attn_by_inverse_layer_idx", False) or getattr(cfg, "reorder_and_upcast_attn", False):
            raise ModelLoadError("GPT-2 variants with per-layer attention scaling are not supported")
        d = self.d_model
        self.blocks = []
        for block in tr.h:
            a, m = block.attn, block.mlp
            self.blocks.append({
                "ln1": (block.ln_1.weight, block.ln_1.bias),
                "W_Q": a.c_attn.weight[:, :d], "W_K": a.c_attn.weight[:, d:2 * d],
                "W_V": a.c_attn.weight[:, 2 * d:],
                "b_Q": a.c_attn.bias[:d], "b_K": a.c_attn.bias[d:2 * d], "b_V": a.c_attn.bias[2 * d:],
                "W_O": a.c_proj.weight, "b_O": a.c_proj.bias,
                "ln2": (block.ln_2.weight, block.ln_2.bias),
                "W_in": m.c_fc.weight, "b_in": m.c_fc.bias, "W_gate": None,
                "W_out": m.c_proj.weight, "b_out": m.c_proj.bias,
            })
        self.ln_final = (tr.ln_f.weight, tr.ln_f.bias)
        self.W_U = hf.lm_head.weight.T
        self.b_U = hf.lm_head.bias if getattr(hf.lm_head, "bias", None) is not None else None

    def _init_llama(self, hf: Any) -> None:
        cfg = hf.config
        base = hf.model
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = cfg.num_key_value_heads
        self.d_model = cfg.hidden_size
        self.d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.norm = "RMS"
        self.eps = cfg.rms_norm_eps
        self.act = _activation(cfg.hidden_act)
        self.W_E = base.embed_tokens.weight
        self.W_pos = None
        self.rotary = base.rotary_emb
        self.scale = 1.0 / math.sqrt(self.d_head)

        def lin(m):
            return m.weight.T, (m.bias if m.bias is not None else None)

        self.blocks = []
        for layer in base.layers:
            a, m = layer.self_attn, layer.mlp
            (W_Q, b_Q), (W_K, b_K), (W_V, b_V) = lin(a.q_proj), lin(a.k_proj), lin(a.v_proj)
            W_O, b_O = lin(a.o_proj)
            self.blocks.append({
                "ln1": (layer.input_layernorm.weight, None),
                "W_Q": W_Q, "W_K": W_K, "W_V": W_V, "b_Q": b_Q, "b_K": b_K, "b_V": b_V,
                "W_O": W_O, "b_O": b_O,
                "ln2": (layer.post_attention_layernorm.weight, None),
                "W_in": m.up_proj.weight.T, "b_in": None, "W_gate": m.gate_proj.weight.T,
                "W_out": m.down_proj.weight.T, "b_out": None,
            })
        self.ln_final = (base.norm.weight, None)
        self.W_U = hf.lm_head.weight.T
        self.b_U = None

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
