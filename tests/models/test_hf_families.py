"""One adapter per Hugging Face family, read by the nnsight backend and the functional forward."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from arithinterp.errors import ModelLoadError  # noqa: E402
from arithinterp.models.backends.hf_arch import ARCHITECTURES, architecture_for  # noqa: E402
from arithinterp.models.functional import FunctionalTransformer  # noqa: E402


def _tiny(model_type: str):
    torch.manual_seed(0)
    if model_type == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=30, n_positions=16,
                                      bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(cfg).eval()
    if model_type == "gpt_neox":
        cfg = transformers.GPTNeoXConfig(num_hidden_layers=1, num_attention_heads=2, hidden_size=16,
                                         intermediate_size=32, vocab_size=30, bos_token_id=0, eos_token_id=0)
        return transformers.GPTNeoXForCausalLM(cfg).eval()
    cfg = transformers.LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   hidden_size=16, intermediate_size=24, vocab_size=30,
                                   max_position_embeddings=16, bos_token_id=0, eos_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_families_share_one_record_per_family() -> None:
    families = {arch.family: arch for arch in ARCHITECTURES.values()}
    assert set(families) == {"GPT-2", "Llama", "GPT-NeoX"}
    assert {t for t, a in ARCHITECTURES.items() if a.functional} == {"gpt2", "llama", "mistral", "qwen2"}


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "gpt_neox"])
def test_every_path_of_a_family_record_resolves(model_type: str) -> None:
    hf = _tiny(model_type)
    arch = architecture_for(hf.config)
    for root_path in (arch.layers, arch.final_norm, arch.pos_embed, arch.rotary):
        if root_path is not None:
            hf.get_submodule(root_path)
    block = hf.get_submodule(f"{arch.layers}.0")
    for path in (arch.attn, *arch.qkv, arch.attn_proj, arch.mlp, arch.mlp_in, arch.mlp_proj,
                 arch.ln1, arch.ln2, arch.mlp_gate):
        if path is not None:
            block.get_submodule(path)
    assert isinstance(getattr(hf.config, arch.eps), float)


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_functional_forward_reads_the_family_record(model_type: str) -> None:
    hf = _tiny(model_type)
    tokens = torch.randint(0, 30, (2, 7))
    with torch.no_grad():
        expected = hf(tokens).logits
    torch.testing.assert_close(FunctionalTransformer(hf).forward(tokens), expected, rtol=1e-5, atol=1e-5)


def test_functional_forward_names_the_families_it_runs() -> None:
    with pytest.raises(ModelLoadError, match="gpt2, llama, mistral, qwen2, not 'gpt_neox'"):
        FunctionalTransformer(_tiny("gpt_neox"))
    with pytest.raises(ModelLoadError, match="supported model types"):
        architecture_for(type("Cfg", (), {"model_type": "bert"})())
