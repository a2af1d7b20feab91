"""LoRA from scratch: start equals the base, merge equality, only adapters train, adapter files alone,
peft agreement, and the domain-text fallback."""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slm_lab import lora
from slm_lab.checkpoint import save_checkpoint
from slm_lab.errors import SLMLabError
from slm_lab.model import SLM, SLMConfig
from slm_lab.tokenizer import CharTokenizer
from slm_lab.train import TrainConfig, train


def small_model(family="llama", seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(family=family, vocab_size=23, block_size=32, n_layer=2, n_head=4, d_model=32)
    return SLM(SLMConfig(**{**cfg, **kw})).eval()


def randomise_adapters(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g) * 0.3)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.3)


def ids(seed=0, B=2, T=12):
    return torch.randint(0, 23, (B, T), generator=torch.Generator().manual_seed(seed))


def test_layer_starts_as_the_base_and_computes_the_low_rank_update():
    torch.manual_seed(0)
    base = nn.Linear(20, 12)
    layer = lora.LoRALinear(base, r=4, alpha=12.0)
    x = torch.randn(3, 5, 20)
    assert torch.equal(layer(x), base(x))                              # B = 0: exactly the base
    assert layer.lora_A.abs().min() > 0 and layer.lora_B.abs().max() == 0
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["lora_A", "lora_B"]
    with torch.no_grad():
        layer.lora_B.normal_()
    dense = F.linear(x, base.weight + 3.0 * layer.lora_B @ layer.lora_A, base.bias)   # alpha / r = 3
    torch.testing.assert_close(layer(x), dense, atol=1e-5, rtol=1e-5)


def test_merge_and_unmerge_layer():
    torch.manual_seed(0)
    layer = lora.LoRALinear(nn.Linear(16, 24), r=2, alpha=4.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(7, 16)
    w0, y = layer.base.weight.clone(), layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.merged_linear()(x), y, atol=1e-5, rtol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family,targets", [("llama", lora.ATTENTION + lora.LLAMA_MLP), ("gpt2", ("q_proj", "proj"))])
def test_merged_model_logits_equal_the_adapted_model(family, targets):
    model = small_model(family)
    names = lora.inject_lora(model, targets, r=4, alpha=8.0)
    n_layers = 7 if family == "llama" else 2
    assert len(names) == 2 * n_layers
    randomise_adapters(model)
    adapted = model(ids()).logits
    merged = lora.merge_lora(model)
    assert not lora.lora_layers(merged) and isinstance(merged, SLM)
    assert merged.num_parameters() == small_model(family).num_parameters()
    assert (merged(ids()).logits - adapted).abs().max() <= 1e-5
    stripped = lora.strip_lora(model)                       # dropping the adapters gives the base back
    torch.testing.assert_close(stripped(ids()).logits, small_model(family)(ids()).logits)


def test_injection_by_name_and_counts():
    model = small_model()
    names = lora.inject_lora(model, ("q_proj", "v_proj"), r=2, alpha=4.0)
    assert names == [f"blocks.{i}.attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    trainable, total = lora.trainable_parameters(model)
    assert trainable == 4 * 2 * (32 + 32) == lora.lora_parameter_count(small_model(), ("q_proj", "v_proj"), 2)
    assert total == small_model().num_parameters() + trainable
    assert all(n.endswith(("lora_A", "lora_B")) for n, p in model.named_parameters() if p.requires_grad)


def test_injection_errors_are_one_sentence():
    with pytest.raises(SLMLabError, match="'qproj' matches no Linear layer.*choose from .*q_proj"):
        lora.inject_lora(small_model(), ("qproj",))
    with pytest.raises(SLMLabError, match="shares its weight with the token embedding"):
        lora.inject_lora(small_model(), ("lm_head",))
    model = small_model()
    lora.inject_lora(model, ("q_proj",))
    with pytest.raises(SLMLabError, match="already has LoRA adapters"):
        lora.inject_lora(model, ("v_proj",))
    with pytest.raises(SLMLabError, match="rank r=0"):
        lora.LoRALinear(nn.Linear(4, 4), r=0)


def test_training_changes_only_the_adapters():
    text = "to be or not to be, that is the question\n" * 40
    tok = CharTokenizer(text)
    data = torch.tensor(tok.encode(text))
    torch.manual_seed(0)
    model = SLM(SLMConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, d_model=16))
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    lora.inject_lora(model, ("q_proj", "v_proj", "up"), r=2, alpha=4.0)
    hist = train(model, data, data, TrainConfig(max_steps=8, batch_size=4, eval_interval=8, eval_batches=1,
                                                warmup_steps=1, lr=1e-2), progress=False)
    assert hist.train_loss[-1] < hist.train_loss[0]
    state = lora.strip_lora(model).state_dict()
    assert all(torch.equal(state[k], v) for k, v in base_state.items())          # the base is untouched
    assert all(layer.lora_B.abs().max() > 0 for layer in lora.lora_layers(model).values())


def test_optimizer_state_is_two_moments_per_trainable_number():
    model = small_model()
    lora.inject_lora(model, ("q_proj", "v_proj"), r=4)
    trainable, _ = lora.trainable_parameters(model)
    n_tensors = sum(1 for p in model.parameters() if p.requires_grad)
    # AdamW keeps exp_avg and exp_avg_sq (fp32) per number and a one-element step counter per tensor.
    assert lora.measure_optimizer_state(model, TrainConfig()) == 8 * trainable + 4 * n_tensors
    full = small_model()
    assert lora.measure_optimizer_state(full, TrainConfig()) == 8 * full.num_parameters() + 4 * len(list(full.parameters()))


def test_adapter_is_saved_alone_and_loads_into_a_fresh_base(tmp_path):
    model = small_model(d_model=64, n_layer=3)
    lora.inject_lora(model, lora.ATTENTION, r=2, alpha=4.0)
    randomise_adapters(model)
    lora.save_adapter(model, tmp_path / "adapter", meta={"base": "test"})
    save_checkpoint(tmp_path / "full", lora.merge_lora(model))
    tensors = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert tensors["r"] == 2 and len(tensors["layers"]) == 12
    adapter_bytes = (tmp_path / "adapter" / "adapter.safetensors").stat().st_size
    payload = 4 * lora.trainable_parameters(model)[0]
    assert payload <= adapter_bytes <= payload + 4096                   # the A and B tensors, a small header
    assert adapter_bytes < 0.1 * (tmp_path / "full" / "model.safetensors").stat().st_size
    fresh = lora.load_adapter(small_model(d_model=64, n_layer=3), tmp_path / "adapter")
    torch.testing.assert_close(fresh(ids()).logits, model(ids()).logits, atol=1e-6, rtol=0)


def test_adapter_errors_and_nothing_lost(tmp_path):
    model = small_model()
    lora.inject_lora(model, ("q_proj",), r=2)
    lora.save_adapter(model, tmp_path)
    before = (tmp_path / "adapter.safetensors").read_bytes()
    with pytest.raises(SLMLabError, match="no LoRA adapters to save"):
        lora.save_adapter(small_model(), tmp_path)
    assert (tmp_path / "adapter.safetensors").read_bytes() == before
    with pytest.raises(SLMLabError, match="is not a LoRA adapter: adapter_config.json is missing"):
        lora.load_adapter(small_model(), tmp_path / "nowhere")
    with pytest.raises(SLMLabError, match="does not fit this model"):
        lora.load_adapter(small_model(d_model=16), tmp_path)
    (tmp_path / "adapter.safetensors").write_bytes(before[:50])
    with pytest.raises(SLMLabError, match="unreadable"):
        lora.load_adapter(small_model(), tmp_path)


def test_peft_on_the_transformers_model_agrees():
    pytest.importorskip("peft")
    model = small_model(n_kv_head=2)
    lora.inject_lora(model, ("q_proj", "v_proj", "gate", "down"), r=4, alpha=8.0)
    randomise_adapters(model)
    peft_model = lora.to_peft(model)
    theirs = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert theirs == lora.trainable_parameters(model)[0] == 2 * 4 * ((32 + 32) + (32 + 16) + (32 + 96) + (96 + 32))
    with torch.no_grad():
        ours = model(ids()).logits
        assert (peft_model(input_ids=ids()).logits - ours).abs().max() <= 1e-5
        merged = peft_model.merge_and_unload()
        assert (merged(input_ids=ids()).logits - lora.merge_lora(model)(ids()).logits).abs().max() <= 1e-5
