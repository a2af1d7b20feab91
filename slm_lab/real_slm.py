"""A real pretrained SLM through the course's own pipeline, when a network (or a cache) has one.

`load_slm` brings a Hugging Face Llama/GPT-2 checkpoint in as the course's `SLM` (through `slm_lab.hub` and
`slm_lab.hf.from_hf`, same logits); `token_batches` cuts a text into fixed next-token batches with its
tokenizer. Three reports run the compression modules on it: `quantization_report` module 05's formats (loss,
bytes, decode speed through the packed kernels, how lopsided each Linear's inputs are), `pruning_report`
module 06's structured cuts (loss, size, decode speed), `deployment_report` module 08's ONNX exports (file size,
loss, logit parity, decode speed). Offline, `load_or_skip` prints one line and a notebook's section does nothing
(the functions here are tested on a random-weight Llama saved with save_pretrained).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import SLMLabError
from .evaluate import mean_loss
from .fast_quant import pack_for_cpu
from .hf import from_hf
from .hub import hub_source, load_causal_lm
from .latency import time_decode
from .measure import file_mb, measure_in_process
from .model import SLM
from .prune import prune_structured
from .quantize import input_outliers, model_bytes, quantize_model

REPO = "HuggingFaceTB/SmolLM2-135M"       # the real SLM modules 05, 06 and 08 run on when they can get it
FORMATS: dict[str, tuple[int, int | None]] = {"int8 per channel": (8, None), "int4 g32": (4, 32)}   # (bits, group)


def load_slm(repo: str | Path, source: str) -> tuple[SLM, object]:
    """(the course's SLM with the checkpoint's weights, its transformers tokenizer); one SLMLabError line when
    it cannot be loaded (see `hub.load_causal_lm`)."""
    hf_model, tokenizer = load_causal_lm(repo, source)
    return from_hf(hf_model), tokenizer


def load_or_skip(repo: str | Path = REPO) -> tuple[SLM, object] | None:
    """`load_slm` from wherever `hub.hub_source` finds the repo; offline or on a failed load, print one line
    saying the section is skipped and return None (a notebook's real-SLM section then does nothing)."""
    source = hub_source((repo,))
    if source is None:
        print(f"offline: {repo} is neither cached nor downloadable here; skipped (with a network this cell runs on it)")
        return None
    try:
        return load_slm(repo, source)
    except SLMLabError as exc:
        print(f"offline: {exc}; skipped")
        return None


def token_batches(tokenizer, text: str, n: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n (x, y) pairs of shape (1, length): consecutive windows of the text's tokens, y shifted by one.
    Fewer when the text is too short for n windows."""
    ids = torch.tensor(tokenizer(text)["input_ids"])
    n = min(n, (ids.numel() - 1) // length)
    return [(ids[i * length: (i + 1) * length].view(1, -1), ids[i * length + 1: (i + 1) * length + 1].view(1, -1))
            for i in range(n)]


def quantization_report(model: SLM, batches, decode_tokens: int = 16, repeats: int = 2) -> dict:
    """fp32 and each of FORMATS: loss on the batches, bytes stored, decode tokens/s on the packed kernels
    (fp32 as it is); and the three most lopsided Linear inputs (`quantize.input_outliers`)."""
    prompt = min(32, model.cfg.block_size - decode_tokens)
    rows = {"fp32": {"loss": mean_loss(model, batches), "bytes": model_bytes(model),
                     "decode_tokens_per_s": time_decode(model, prompt, decode_tokens, repeats)}}
    for name, (bits, group) in FORMATS.items():
        q = quantize_model(model, bits, group)
        rows[name] = {"loss": mean_loss(q, batches), "bytes": model_bytes(q),
                      "decode_tokens_per_s": time_decode(pack_for_cpu(q), prompt, decode_tokens, repeats)}
    ratios = input_outliers(model, batches[0][0])
    return {"rows": rows, "outliers": sorted(ratios.items(), key=lambda kv: -kv[1])[:3]}


def pruning_report(model: SLM, batches, shapes: list[tuple[int, int]], decode_tokens: int = 16,
                   repeats: int = 2) -> dict[str, dict]:
    """The unpruned model and each (n_kv_head, d_ff) structured cut (`prune.prune_structured`, importance
    from the first batch, no recovery training): loss on the batches, parameters, decode tokens/s."""
    prompt = min(32, model.cfg.block_size - decode_tokens)
    models = {"unpruned": model}
    for kv, ff in shapes:
        models[f"{kv} kv heads, d_ff {ff}"] = prune_structured(model, batches[:1], n_kv_head=kv, d_ff=ff)
    return {name: {"loss": mean_loss(m, batches), "params": m.num_parameters(),
                   "decode_tokens_per_s": time_decode(m, prompt, decode_tokens, repeats)}
            for name, m in models.items()}


def deployment_report(model: SLM, batches, folder: str | Path, decode_tokens: int = 16, repeats: int = 2,
                      threads: int = 1) -> dict[str, dict]:
    """Module 08's exports of `model` into `folder`: fp32 ONNX, int8 per channel and per tensor, int4 symmetric
    and with zero-points. Each row: file MB, loss on the batches (ONNX Runtime), the largest logit difference
    from PyTorch on the first batch, greedy decode tokens/s in ONNX Runtime at `threads`."""
    import numpy as np

    from .onnx_export import export_onnx
    from .onnx_quantize import quantize_int4, quantize_int8
    from .onnx_runtime import OnnxLM, onnx_mean_loss

    folder = Path(folder)
    onnx_path = export_onnx(model, folder / "model.onnx")
    paths = {"onnx fp32": onnx_path,
             "onnx int8 per channel": quantize_int8(onnx_path, folder / "model.int8.onnx"),
             "onnx int8 per tensor": quantize_int8(onnx_path, folder / "model.int8-tensor.onnx", per_channel=False),
             "onnx int4 symmetric": quantize_int4(onnx_path, folder / "model.int4.onnx"),
             "onnx int4 zero-points": quantize_int4(onnx_path, folder / "model.int4-zero.onnx", symmetric=False)}
    x0 = batches[0][0]
    with torch.no_grad():
        ref = model.eval()(x0).logits.numpy()
    prompt = x0[0, :min(32, model.cfg.block_size - decode_tokens)].tolist()
    rows = {"pytorch fp32": {"file_mb": model_bytes(model) / 1e6, "loss": mean_loss(model, batches),
                             "max_logit_diff": 0.0,
                             "decode_tokens_per_s": time_decode(model, len(prompt), decode_tokens, repeats)}}
    for name, path in paths.items():
        diff = float(np.abs(OnnxLM(path).forward(x0.numpy())[0] - ref).max())
        speed = measure_in_process("onnxruntime", str(path), prompt, decode_tokens, repeats, threads)
        rows[name] = {"file_mb": file_mb(path), "loss": onnx_mean_loss(path, batches), "max_logit_diff": diff,
                      "decode_tokens_per_s": speed["decode_tokens_per_s"]}
    return rows
