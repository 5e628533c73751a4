"""One adapter per Hugging Face architecture family.

Code that drives HF modules directly needs module paths such as
``transformer.h.3.attn.c_proj``; users never do. Each family has exactly one
:class:`HFArchitecture` record, read by both the nnsight backend (where each
site lives, how weights are laid out) and the functional forward of
:mod:`arithinterp.models.functional` (norms, positions, gating), so
supporting a new family is one entry here. Nothing in this module imports
nnsight.
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
    """Everything arithinterp needs to know about one HF family: module paths (dotted,
    from the HF root module or from one block), weight layouts and config names.

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
        ln1: the norm before attention, from a block.
        ln2: the norm before the MLP, from a block.
        mlp_gate: the gate projection of a gated MLP, from a block (``None``: ungated).
        pos_embed: the learned position embedding, from the root (``None``: none).
        rotary: the rotary embedding module, from the root (``None``: no rotary).
        eps: the config attribute holding the norm's epsilon.
        functional: whether :class:`~arithinterp.models.functional.FunctionalTransformer`
            runs this family (fast engines fall back to the literal path otherwise).
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
    ln1: str
    ln2: str
    eps: str
    conv1d: bool = False
    rms_norm: bool = False
    parallel_residual: str | None = None
    mlp_gate: str | None = None
    pos_embed: str | None = None
    rotary: str | None = None
    functional: bool = False


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
    ln1="ln_1",
    ln2="ln_2",
    eps="layer_norm_epsilon",
    conv1d=True,
    pos_embed="transformer.wpe",
    functional=True,
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
    ln1="input_layernorm",
    ln2="post_attention_layernorm",
    eps="rms_norm_eps",
    rms_norm=True,
    mlp_gate="mlp.gate_proj",
    rotary="model.rotary_emb",
    functional=True,
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
    ln1="input_layernorm",
    ln2="post_attention_layernorm",
    eps="layer_norm_eps",
    parallel_residual="use_parallel_residual",
    rotary="gpt_neox.rotary_emb",
)

ARCHITECTURES: dict[str, HFArchitecture] = {
    "gpt2": _GPT2,
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "mistral": _LLAMA,
    "gpt_neox": _NEOX,
}
"""Supported ``model_type`` values and their family records."""


def architecture_for(config: Any, *, functional: bool = False) -> HFArchitecture:
    """The family record of an HF config, or :class:`ModelLoadError` naming the supported types.

    With ``functional=True`` only families the functional forward runs are accepted.
    """
    model_type = getattr(config, "model_type", None)
    arch = ARCHITECTURES.get(model_type)
    if functional and (arch is None or not arch.functional):
        supported = sorted(t for t, a in ARCHITECTURES.items() if a.functional)
        raise ModelLoadError(
            f"the functional forward supports model types {', '.join(supported)}, not {model_type!r}"
        )
    if arch is None:
        raise ModelLoadError(
            f"arithinterp does not know where the sites of model_type {model_type!r} "
            f"live; supported model types: {', '.join(sorted(ARCHITECTURES))}"
        )
    return arch


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


def in_out(weight: torch.Tensor, conv1d: bool) -> torch.Tensor:
    """A projection's weight as ``[in, out]`` (``nn.Linear`` stores ``[out, in]``)."""
    return weight if conv1d else weight.T


def hf_weights(model: torch.nn.Module, arch: HFArchitecture, shape: ModelShape) -> Weights:
    """The weights of an HF model in TransformerLens layout (see :class:`Weights`)."""
    blocks = [model.get_submodule(f"{arch.layers}.{i}") for i in range(shape.n_layers)]

    def per_layer(path: str) -> torch.Tensor:
        return torch.stack(
            [in_out(b.get_submodule(path).weight, arch.conv1d) for b in blocks]
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
