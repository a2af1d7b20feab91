"""Training memory: ZeRO's published per-device figures, the bytes per parameter of fp32 and mixed precision,
and the activation formula against the tensors autograd actually saves."""
import pytest
import torch

from slm_lab import train_memory as M
from slm_lab.errors import SLMLabError
from slm_lab.model import SLM, SLMConfig
from slm_lab.train import TrainConfig, make_optimizer


def test_zero_stages_reproduce_the_papers_figure():
    """Rajbhandari et al. (2020), Figure 1: 7.5B parameters on 64 GPUs, mixed-precision Adam (K = 12)."""
    per_device = [M.zero_bytes_per_device(7.5e9, 64, s) / 1e9 for s in range(4)]
    assert per_device == pytest.approx([120, 31.4, 16.6, 1.9], abs=0.06)
    assert M.zero_bytes_per_device(7.5e9, 1, 3) == pytest.approx(120e9)      # one device: nothing to shard
    with pytest.raises(SLMLabError, match="stage 4"):
        M.zero_bytes_per_device(1e9, 8, 4)


def test_bytes_per_parameter():
    assert sum(M.state_bytes(1, "fp32").values()) == 16 == sum(M.state_bytes(1, "mixed").values())
    with pytest.raises(SLMLabError, match="precision"):
        M.state_bytes(1, "fp8")


@pytest.mark.parametrize("n_layer,d_model,n_head,n_kv_head", [(1, 64, 4, 4), (2, 64, 4, 2), (3, 96, 6, 1)])
def test_activation_formula_equals_what_autograd_saves(n_layer, d_model, n_head, n_kv_head):
    cfg = SLMConfig(vocab_size=84, family="llama", n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head,
                    d_model=d_model, block_size=64)
    model = SLM(cfg)
    for batch, context in ((2, 64), (3, 32)):
        x, y = torch.randint(0, 84, (batch, context)), torch.randint(0, 84, (batch, context))
        measured = M.saved_activation_bytes(model, x, y)
        assert abs(measured - M.activation_bytes(cfg, batch, context)) <= 8       # the loss scalar


def test_state_bytes_held_after_a_step_is_16_per_parameter():
    model = SLM(SLMConfig(vocab_size=84, family="llama", n_layer=2, n_head=4, d_model=64, block_size=32))
    opt = make_optimizer(model, TrainConfig())
    x = torch.randint(0, 84, (2, 32))
    model(x, x).loss.backward()
    opt.step()
    held = M.state_bytes_held(model, opt)
    n = sum(p.numel() for p in model.parameters())
    assert held == {k: int(v) for k, v in M.state_bytes(n, "fp32").items()}
