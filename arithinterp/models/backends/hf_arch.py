"""Where each site lives in a Hugging Face model, per architecture family.

Backends that drive HF modules directly (nnsight) need module paths such as
``transformer.h.3.attn.c_proj``; users never do. This table maps a config's
``model_type`` to those paths and to the weight layouts, so supporting a new
family is one entry here. Nothing in this module imports nnsight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from arithinterp.errors import ModelLoadError
from arithinterp.models.backends.base import Weights
from arithinterp.models.site import ModelShape

QKVLayout = Literal["gpt2", "neox", "separate"]
"""How q, k and v leave the input projection: one fused ``[q | k | v]`` output
(GPT-2), one fused output interleaved per head ``[h, (q k v), d_head]`` (GPT-NeoX),
or three separate projections (Llama family)."""


@dataclass(frozen=True)
class HFArchitecture:
    """Module paths (dotted, from the HF root module or from one block) of one family.

    The token embedding and the unembedding are found through HF's own
    ``get_input_embeddings`` / ``get_output_embeddings``, whose names move
    between transformers versions (GPT-NeoX's ``embed_out`` became ``lm_head``).

    Attributes:
        family: a display name.
        layers: the ModuleList of blocks, from the root.
        final_norm: the final normalisation, from the root.
        attn: the attention module, from a block; its output is ``(attn_out, weights)``.
        qkv: the input projection(s) of attention, from a block (one fused or three).
        qkv_layout: see :data:`QKVLayout`.
        attn_proj: the attention output projection, from a block; its input is z.
        mlp: the MLP module, from a block.
        mlp_in: the MLP input projection (the ungated ``up`` projection), from a block.
        mlp_proj: the MLP output projection, from a block; its input is mlp_post.
        conv1d: whether linear weights are stored ``[in, out]`` (GPT-2 ``Conv1D``).
        rms_norm: whether the family normalises with RMSNorm.
        parallel_residual: the config flag that, when true, makes attention and
            MLP read the same residual (no resid_mid exists).
    """

    family: str
    layers: str
    final_norm: str
    attn: str
    qkv: tuple[str, ...]
    qkv_layout: QKVLayout
    attn_proj: str
    mlp: str
    mlp_in: str
    mlp_proj: str
    conv1d: bool = False
    rms_norm: bool = False
    parallel_residual: str | None = None


_GPT2 = HFArchitecture(
    family="GPT-2",
    layers="transformer.h",
    final_norm="transformer.ln_f",
    attn="attn",
    qkv=("attn.c_attn",),
    qkv_layout="gpt2",
    attn_proj="attn.c_proj",
    mlp="mlp",
    mlp_in="mlp.c_fc",
    mlp_proj="mlp.c_proj",
    conv1d=True,
)

_LLAMA = HFArchitecture(
    family="Llama",
    layers="model.layers",
    final_norm="model.norm",
    attn="self_attn",
    qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    qkv_layout="separate",
    attn_proj="self_attn.o_proj",
    mlp="mlp",
    mlp_in="mlp.up_proj",
    mlp_proj="mlp.down_proj",
    rms_norm=True,
)

_NEOX = HFArchitecture(
    family="GPT-NeoX",
    layers="gpt_neox.layers",
    final_norm="gpt_neox.final_layer_norm",
    attn="attention",
    qkv=("attention.query_key_value",),
    qkv_layout="neox",
    attn_proj="attention.dense",
    mlp="mlp",
    mlp_in="mlp.dense_h_to_4h",
    mlp_proj="mlp.dense_4h_to_h",
    parallel_residual="use_parallel_residual",
)

ARCHITECTURES: dict[str, HFArchitecture] = {
    "gpt2": _GPT2,
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "mistral": _LLAMA,
    "gpt_neox": _NEOX,
}
"""Supported ``model_type`` values and their module paths."""


def architecture_for(config: Any) -> HFArchitecture:
    """The table entry for an HF config, or :class:`ModelLoadError` naming the supported types."""
    model_type = getattr(config, "model_type", None)
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise ModelLoadError(
            f"the nnsight backend does not know where the sites of model_type {model_type!r} "
            f"live; supported model types: {', '.join(sorted(ARCHITECTURES))}"
        ) from None


def _config_int(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    return None


def model_shape(config: Any, arch: HFArchitecture) -> ModelShape:
    """The :class:`ModelShape` described by an HF config."""
    d_model = int(config.hidden_size)
    n_heads = int(config.num_attention_heads)
    return ModelShape(
        n_layers=int(config.num_hidden_layers),
        n_heads=n_heads,
        d_model=d_model,
        d_head=_config_int(config, "head_dim") or d_model // n_heads,
        d_mlp=_config_int(config, "intermediate_size", "n_inner") or 4 * d_model,
        d_vocab=int(config.vocab_size),
        n_ctx=int(config.max_position_embeddings),
        act_fn=str(getattr(config, "hidden_act", None) or getattr(config, "activation_function", "gelu")),
        normalization="RMS" if arch.rms_norm else "LN",
        n_kv_heads=n_kv_heads(config),
    )


def n_kv_heads(config: Any) -> int:
    """Key/value heads (fewer than query heads under grouped-query attention)."""
    return _config_int(config, "num_key_value_heads") or int(config.num_attention_heads)


def _in_out(weight: torch.Tensor, conv1d: bool) -> torch.Tensor:
    """A projection's weight as ``[in, out]`` (``nn.Linear`` stores ``[out, in]``)."""
    return weight if conv1d else weight.T


def hf_weights(model: torch.nn.Module, arch: HFArchitecture, shape: ModelShape) -> Weights:
    """The weights of an HF model in TransformerLens layout (see :class:`Weights`)."""
    blocks = [model.get_submodule(f"{arch.layers}.{i}") for i in range(shape.n_layers)]

    def per_layer(path: str) -> torch.Tensor:
        return torch.stack(
            [_in_out(b.get_submodule(path).weight, arch.conv1d) for b in blocks]
        )

    unembed = model.get_output_embeddings()
    bias = getattr(unembed, "bias", None)
    W_U = unembed.weight.T
    return Weights(
        W_U=W_U,
        b_U=bias if bias is not None else torch.zeros(shape.d_vocab, dtype=W_U.dtype, device=W_U.device),
        W_E=model.get_input_embeddings().weight,
        W_O=per_layer(arch.attn_proj).reshape(shape.n_layers, shape.n_heads, shape.d_head, shape.d_model),
        W_in=per_layer(arch.mlp_in),
        W_out=per_layer(arch.mlp_proj),
    )
