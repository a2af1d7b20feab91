"""Conversion to and from transformers: random tiny HF models built offline from a config."""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from slm_lab.errors import SLMLabError
from slm_lab.hf import from_hf, to_hf
from slm_lab.model import SLM, SLMConfig


def randomise_norms(model):
    """HF initialises norms to 1/0; randomise them so a swapped or missed norm would show."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(0.5, 0.3)
    return model


HF_MODELS = {
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=61, n_positions=32, n_embd=48, n_layer=2, n_head=4,
                                               bos_token_id=None, eos_token_id=None)),
    "gpt2-untied": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=61, n_positions=32, n_embd=48, n_layer=2,
                                                      n_head=4, n_inner=100, tie_word_embeddings=False,
                                                      bos_token_id=None, eos_token_id=None)),
    "llama-gqa": lambda: LlamaForCausalLM(LlamaConfig(vocab_size=61, hidden_size=48, intermediate_size=80,
                                                      num_hidden_layers=2, num_attention_heads=6,
                                                      num_key_value_heads=2, max_position_embeddings=32,
                                                      rope_theta=500.0, bos_token_id=None, eos_token_id=None)),
    "llama-tied-bias": lambda: LlamaForCausalLM(LlamaConfig(vocab_size=61, hidden_size=48, intermediate_size=80,
                                                            num_hidden_layers=2, num_attention_heads=4,
                                                            attention_bias=True, mlp_bias=True,
                                                            tie_word_embeddings=True, max_position_embeddings=32,
                                                            bos_token_id=None, eos_token_id=None)),
    # as after pruning: 2 heads of 16 (one kv head) at hidden_size 48, so head_dim × heads ≠ hidden_size
    "llama-narrow-heads": lambda: LlamaForCausalLM(LlamaConfig(vocab_size=61, hidden_size=48, intermediate_size=80,
                                                               num_hidden_layers=2, num_attention_heads=2,
                                                               num_key_value_heads=1, head_dim=16,
                                                               max_position_embeddings=32, bos_token_id=None,
                                                               eos_token_id=None)),
}


@pytest.mark.parametrize("name", HF_MODELS)
def test_hf_to_ours_and_back_keeps_logits(name):
    torch.manual_seed(0)
    hf = randomise_norms(HF_MODELS[name]()).eval()
    x = torch.randint(0, 61, (2, 24))
    with torch.no_grad():
        ref = hf(x).logits
        ours = from_hf(hf)
        back = to_hf(ours)
        torch.testing.assert_close(ours(x).logits, ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(back(x).logits, ref, rtol=0, atol=1e-5)
    assert ours.num_parameters() == sum(p.numel() for p in hf.parameters())
    assert {k: v.shape for k, v in back.state_dict().items()} == {k: v.shape for k, v in hf.state_dict().items()}
    if name.startswith("llama"):
        assert back.config.head_dim == hf.config.head_dim == ours.cfg.head_dim


def test_a_gpt2_model_with_pruned_heads_is_refused_in_one_sentence():
    narrow = SLM(SLMConfig(family="gpt2", vocab_size=61, block_size=32, n_layer=1, n_head=2, d_model=48, head_dim=16))
    with pytest.raises(SLMLabError) as info:
        to_hf(narrow)
    msg = str(info.value)
    assert "GPT-2 has no head_dim" in msg and "prune a llama-family model" in msg
    assert "\n" not in msg and msg.endswith(".")


def test_unsupported_model_type_is_one_clear_error():
    from transformers import BertConfig

    with pytest.raises(SLMLabError, match="model type 'bert' cannot be converted"):
        from slm_lab.hf import slm_config
        slm_config(BertConfig())
