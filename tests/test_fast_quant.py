"""slm_lab.fast_quant against the teaching QuantizedLinear: the packed kernels reproduce the dequantized
weight's matmul to bf16 rounding, for every format they claim; a wrong nibble or zero-point mapping is
far outside that tolerance; unsupported formats are left to the teaching layer; a whole model's logits
and greedy tokens follow the teaching model's."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slm_lab import fast_quant as FQ
from slm_lab.errors import SLMLabError
from slm_lab.model import SLM, SLMConfig
from slm_lab.quantize import QuantizedLinear, QuantizedWeight, quantize_model

BF16_REL = 1e-2          # bf16 keeps 8 bits of mantissa: about 0.4% per value, less on a sum of many


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def layer(n_out=72, n_in=128, seed=0, bias=True):
    torch.manual_seed(seed)
    lin = nn.Linear(n_in, n_out, bias=bias)
    lin.weight.data[3, 5] = 0.9                        # an outlier row, as trained weights have
    return lin


@pytest.mark.parametrize("bits,group,symmetric,kind", [
    (8, None, True, FQ.PackedInt8Linear),
    (4, 32, False, FQ.PackedInt4Linear),
    (4, 64, True, FQ.PackedInt4Linear),
    (4, None, False, FQ.PackedInt4Linear),             # one group per row of 128 inputs
])
def test_packed_matches_teaching_layer(bits, group, symmetric, kind):
    lin = layer()
    teach = QuantizedLinear.from_linear(lin, bits, group, symmetric)
    fast = FQ.packed_linear(teach)
    assert isinstance(fast, kind)
    x = torch.randn(2, 7, 128)
    want = teach(x)
    got = fast(x)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert rel(got, want) < BF16_REL
    # The teaching layer's error against the float layer is the quantization error, far above bf16's:
    # the packed layer really runs the quantized integers, not the float weight.
    if bits == 4:
        assert rel(got, lin(x)) > 3 * rel(got, want)


def test_wrong_zero_point_sign_is_caught():
    """The repacking's one subtle step: the kernel's offset is −zero·s. With +zero·s the output is far off."""
    teach = QuantizedLinear.from_linear(layer(), 4, 32, symmetric=False)
    fast = FQ.PackedInt4Linear(teach.qweight, teach.bias)
    x = torch.randn(5, 128)
    wrong = fast.scale_zeros.clone()
    wrong[..., 1] = -wrong[..., 1]
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.bfloat16(), fast.packed, 32, wrong)[:, :72].float()
    assert rel(y + teach.bias, teach(x)) > 10 * BF16_REL


@pytest.mark.parametrize("n_out,n_in", [(65, 128), (64, 48), (80, 88)])
def test_shapes_off_the_kernels_grid_are_padded_and_cut(n_out, n_in):
    """Output rows pad to a multiple of 16 (the course's 65-token head); a row whose last group is short
    (48 or 88 inputs in groups of 32, as pruned layers have) pads with zero inputs."""
    teach = QuantizedLinear.from_linear(layer(n_out=n_out, n_in=n_in), 4, 32, symmetric=False)
    fast = FQ.packed_linear(teach)
    assert isinstance(fast, FQ.PackedInt4Linear)
    x = torch.randn(3, n_in)
    assert fast(x).shape == (3, n_out) and rel(fast(x), teach(x)) < BF16_REL


@pytest.mark.parametrize("bits,group,symmetric", [(8, 32, True), (8, None, False), (4, 48, False), (4, None, True),
                                                   (3, 32, False)])
def test_formats_without_a_kernel_stay_teaching(bits, group, symmetric):
    n_in = 96 if group is None and bits == 4 else 128          # one group of 96: not a size the kernel runs
    teach = QuantizedLinear.from_linear(layer(n_in=n_in), bits, group, symmetric)
    assert FQ.packed_linear(teach) is teach
    with pytest.raises(SLMLabError, match="kernel runs"):
        (FQ.PackedInt8Linear if bits == 8 else FQ.PackedInt4Linear)(teach.qweight)
        (FQ.PackedInt4Linear if bits == 8 else FQ.PackedInt8Linear)(teach.qweight)


def test_int4_kernel_groups_match_quantize_groups_layout():
    """Groups are consecutive inputs of one row, as in quantize_groups: check one value by hand."""
    w = torch.zeros(16, 64)
    w[0, :32] = torch.linspace(-1, 1, 32)            # group 0 of row 0 spans [-1, 1]; group 1 is all zero
    qw = QuantizedWeight(w, bits=4, group_size=32, symmetric=False)
    fast = FQ.PackedInt4Linear(qw)
    x = torch.zeros(1, 64)
    x[0, 31] = 1.0                                    # picks W[:, 31]
    want = qw.dequantize()[:, 31]
    assert torch.allclose(fast(x)[0], want, atol=2e-2) and abs(float(want[0]) - 1.0) < 0.1


@pytest.mark.parametrize("bits,group", [(8, None), (4, 32)])
def test_packed_model_follows_teaching_model(bits, group):
    torch.manual_seed(0)
    model = SLM(SLMConfig(family="llama", vocab_size=65, n_layer=2, n_head=4, d_model=128, block_size=64)).eval()
    teach = quantize_model(model, bits, group)
    fast = FQ.pack_for_cpu(teach)
    counts = FQ.packed_layers(fast)
    packed = counts["PackedInt8Linear"] + counts["PackedInt4Linear"]
    assert packed == sum(isinstance(m, nn.Linear) for m in model.modules()) and counts["QuantizedLinear"] == 0
    idx = torch.randint(0, 65, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = fast(idx).logits, teach(idx).logits
    assert rel(a, b) < BF16_REL
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean()
    assert agree > 0.9
    # Both still differ from the float model: the packed model did not fall back to float weights.
    with torch.no_grad():
        assert not torch.allclose(F.softmax(a, -1), F.softmax(model(idx).logits, -1), atol=1e-3)
