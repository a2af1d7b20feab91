"""Quantize an exported ONNX model for ONNX Runtime: int8 (dynamic) and int4 (weight-only blocks).

- `quantize_int8`: every MatMul weight stored as int8 with one scale per output channel (module 05's
  choice; per_channel=False: one per matrix); activations quantized on the fly, per call, with one scale
  per tensor, and the product computed in integers (MatMulInteger). The activations' rounding is what
  module 05's weight-only int8 does not pay.
- `quantize_int4`: weights in blocks of `block_size` values with one scale per block (and, with
  symmetric=False, a zero-point per block), two values per byte (the MatMulNBits operator); dequantized
  inside the kernel, compute stays float32.

Both write atomically and carry the deploy config over, so `slm_lab.onnx_runtime.OnnxLM` runs the
quantized file exactly like the original.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from .atomic import atomic_path
from .onnx_runtime import META_KEY


@contextmanager
def _quiet():
    """ONNX Runtime's quantizers log advice and per-node progress at WARNING/INFO; keep notebooks clean."""
    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _copy_metadata(src: Path, dst: Path) -> None:
    """Carry the deploy config over to the quantized file (the quantizers do not always keep it)."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    model = onnx.load(str(dst))
    have = {p.key for p in model.metadata_props}
    if meta.get(META_KEY) and META_KEY not in have:
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, META_KEY: meta[META_KEY]})
        onnx.save_model(model, str(dst))


def quantize_int8(src: str | Path, dst: str | Path, per_channel: bool = True) -> Path:
    """Dynamic int8: MatMul weights stored as int8 with a scale per output channel (per_channel=False:
    one per matrix); activations quantized on the fly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    with atomic_path(dst, suffix=".tmp.onnx") as tmp, _quiet():
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=per_channel)
        _copy_metadata(src, tmp)
    return dst


def quantize_int4(src: str | Path, dst: str | Path, block_size: int = 32, symmetric: bool = True) -> Path:
    """Weight-only int4 in blocks of `block_size` along the input dimension (MatMulNBits); fp32 compute.
    symmetric: absmax blocks (the default: no zero-points to store); False adds a zero-point per block,
    module 05's default below 8 bits."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    src, dst = Path(src), Path(dst)
    with atomic_path(dst, suffix=".tmp.onnx") as tmp, _quiet():
        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)
        quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=DefaultWeightOnlyQuantConfig(
            block_size=block_size, is_symmetric=symmetric))
        quantizer.process()
        quantizer.model.save_model_to_file(str(tmp), use_external_data_format=False)
        _copy_metadata(src, tmp)
    return dst
