"""`slm-lab export --ckpt DIR --format onnx [--int8] [--int4] --out DIR`: a checkpoint, ready for a device.

--format onnx   model.onnx with a KV cache (+ model.int8.onnx, model.int4.onnx), deploy_config.json and
                tokenizer.json: everything ONNX Runtime needs, no PyTorch.
--format hf     transformers' save_pretrained (config.json, model.safetensors) + tokenizer.json, for
                other runtimes (llama.cpp converters, transformers.js, MLC, ...).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import SLMLabError


def run(args) -> int:
    from ..onnx_export import FORMATS, export_checkpoint

    fmt = (args.format or "").strip().lower()
    if fmt not in FORMATS:
        raise SLMLabError(f"format {args.format!r} is not supported; use --format onnx (ONNX Runtime) "
                          "or --format hf (transformers).")
    if not Path(args.ckpt).is_dir():
        raise SLMLabError(f"no checkpoint directory at {args.ckpt}; train one with "
                          f"`slm-lab train --preset tiny --out {args.ckpt}` or check the path.")
    written = export_checkpoint(args.ckpt, args.out, fmt=fmt, int8=args.int8, int4=args.int4)
    for path in written.values():
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if fmt == "onnx":
        print("run it: python -c \"from slm_lab.onnx_runtime import OnnxLM; "
              f"print(OnnxLM('{written['onnx']}').generate([0], 20))\"")
    return 0


def register(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX (optionally int8 / int4) or the transformers format")
    p.add_argument("--ckpt", required=True, help="checkpoint directory (from `slm-lab train` or the course cache)")
    p.add_argument("--format", default="onnx", help="onnx (ONNX Runtime, with a KV cache) or hf (transformers)")
    p.add_argument("--int8", action="store_true", help="also write model.int8.onnx (dynamic int8 quantization)")
    p.add_argument("--int4", action="store_true", help="also write model.int4.onnx (4-bit weights, MatMulNBits)")
    p.add_argument("--out", required=True, help="directory to write into (created if needed)")
    p.set_defaults(func=run)
