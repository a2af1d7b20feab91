"""Export the SLM to ONNX with a KV cache, so ONNX Runtime can run it without PyTorch.

One graph serves both phases of generation:

    inputs   input_ids (B, T) int64, past_key_i / past_value_i (B, K, P, hd) float32 for each layer i
    outputs  logits (B, T, V), present_key_i / present_value_i (B, K, P + T, hd)

Prefill feeds the prompt with an empty past (P = 0); each decode step feeds one token with the
presents of the previous call. Batch, T and P are dynamic axes. The export traces the model with
`torch.export` (`torch.onnx.export(..., dynamo=True)`, PyTorch's supported exporter) and lets
onnxscript's optimizer fold constants (weights pre-transposed for MatMul, so int8 quantization finds
them). The runtime side, which never imports torch, is `slm_lab.onnx_runtime`: sessions, decoding, and
the graph's input/output names (`input_names`, `output_names`), which this module imports. Quantizing the
exported file is `slm_lab.onnx_quantize`; measuring it, `slm_lab.measure`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from .atomic import atomic_path
from .errors import SLMLabError
from .model import SLM
from .onnx_runtime import META_KEY, input_names, load_session, output_names

CONFIG_FILE, ONNX_FILE, TOKENIZER_FILE = "deploy_config.json", "model.onnx", "tokenizer.json"
FORMATS = ("onnx", "hf")


class FlatKVModel(nn.Module):
    """The SLM with flat inputs and outputs, as an ONNX graph needs them: (ids, k0, v0, k1, v1, ...)."""

    def __init__(self, model: SLM):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor):
        """input_ids (B, T); past: 2·n_layer tensors (B, K, P, hd) → logits (B, T, V), 2·n_layer presents."""
        cache = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        out = self.model(input_ids, kv_cache=cache, use_cache=True)
        return (out.logits, *[t for kv in out.kv_cache for t in kv])


def deploy_config(model: SLM) -> dict:
    """What a runtime needs to know to drive the graph: names, cache shapes, the longest context."""
    cfg = model.cfg
    return {"family": cfg.family, "vocab_size": cfg.vocab_size, "block_size": cfg.block_size,
            "n_layer": cfg.n_layer, "n_kv_head": cfg.n_kv_head, "head_dim": cfg.head_dim,
            "inputs": input_names(cfg.n_layer), "outputs": output_names(cfg.n_layer), "dtype": "float32"}


def _strip_debug_info(proto) -> None:
    """Drop the exporter's per-node metadata (stack traces, module paths): ~5% of a small model's file,
    and the same bytes in every variant, so size ratios would be understated with it."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def export_onnx(model: SLM, path: str | Path) -> Path:
    """Write `model` as an ONNX graph with a KV cache to `path` (atomically). Returns the path."""
    try:
        import onnx
        import onnxscript  # noqa: F401
    except ImportError:
        raise SLMLabError("ONNX export needs the deploy extra: pip install 'slm_lab[deploy]'.") from None
    cfg = model.cfg
    if cfg.block_size < 8:
        raise SLMLabError(f"block_size={cfg.block_size} is too short to trace a KV-cache graph; use at least 8.")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # Example sizes ≥ 2 and all different, so torch.export keeps every axis symbolic.
    B, T, P = 2, 3, 4
    ids = torch.zeros(B, T, dtype=torch.long, device=device)
    past = tuple(torch.zeros(B, cfg.n_kv_head, P, cfg.head_dim, device=device) for _ in range(2 * cfg.n_layer))
    batch, seq, past_len = torch.export.Dim("batch"), torch.export.Dim("seq"), torch.export.Dim("past")
    dynamic = {"input_ids": {0: batch, 1: seq}, "past": tuple({0: batch, 2: past_len} for _ in past)}
    quiet = logging.getLogger("torch.onnx")       # "torchvision is not installed" notes, one per op
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(FlatKVModel(model), (ids, *past), dynamo=True, verbose=False,
                                        input_names=input_names(cfg.n_layer), output_names=output_names(cfg.n_layer),
                                        dynamic_shapes=dynamic, optimize=True)
    finally:
        model.train(was_training)
        quiet.setLevel(level)
    proto = program.model_proto   # type: ignore[union-attr]  # torch types export() Optional; dynamo=True returns a program
    _strip_debug_info(proto)
    onnx.helper.set_model_props(proto, {META_KEY: json.dumps(deploy_config(model))})   # the runtime reads it
    return _write_proto(proto, Path(path))


def _write_proto(proto, path: Path) -> Path:
    import onnx

    with atomic_path(path, suffix=".tmp.onnx") as tmp:
        onnx.save_model(proto, str(tmp))
    return path


def export_checkpoint(ckpt_dir: str | Path, out_dir: str | Path, fmt: str = "onnx", int8: bool = False,
                      int4: bool = False) -> dict[str, Path]:
    """Export a course checkpoint for deployment; returns {what: path} of the files written.

    onnx: model.onnx (+ model.int8.onnx, model.int4.onnx), deploy_config.json, tokenizer.json.
    hf:   transformers' save_pretrained (config.json, model.safetensors) + tokenizer.json.
    Everything is written in a temporary directory first and moved into out_dir file by file, so a
    failed export never leaves half a model there, nor removes what was there before.
    """
    if fmt not in FORMATS:
        raise SLMLabError(f"format {fmt!r} is not supported; "
                          "use --format onnx (ONNX Runtime) or --format hf (transformers).")
    if fmt == "hf" and (int8 or int4):
        raise SLMLabError("--int8 / --int4 apply to the ONNX export; use them with --format onnx.")
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(ckpt_dir)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SLMLabError(f"--out {out_dir} is a file; give a directory to export into.")
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".export-"))
    try:
        written = _export_into(ckpt, staging, fmt, int8, int4)
        final = {}
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask                       # ordinary permissions, whatever the writer used
        for what, path in written.items():
            final[what] = out_dir / path.name
            os.chmod(path, mode)
            os.replace(path, final[what])
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _export_into(ckpt, folder: Path, fmt: str, int8: bool, int4: bool) -> dict[str, Path]:
    written: dict[str, Path] = {}
    if ckpt.tokenizer is not None:
        written["tokenizer"] = folder / TOKENIZER_FILE
        written["tokenizer"].write_text(json.dumps(ckpt.tokenizer.to_dict(), ensure_ascii=False), encoding="utf-8")
    if fmt == "hf":
        from transformers.utils import logging as hf_logging

        from .hf import to_hf

        hf_logging.disable_progress_bar()
        to_hf(ckpt.model).save_pretrained(folder)
        for p in folder.iterdir():
            if p.is_file() and p.name != TOKENIZER_FILE:
                written[p.name] = p
        return written
    from .onnx_quantize import quantize_int4, quantize_int8

    written["onnx"] = export_onnx(ckpt.model, folder / ONNX_FILE)
    config = {**deploy_config(ckpt.model), "source": str(ckpt.path)}
    written["config"] = folder / CONFIG_FILE
    written["config"].write_text(json.dumps(config, indent=2), encoding="utf-8")
    if int8:
        written["int8"] = quantize_int8(written["onnx"], folder / "model.int8.onnx")
    if int4:
        written["int4"] = quantize_int4(written["onnx"], folder / "model.int4.onnx")
    return written


@torch.no_grad()
def max_logit_difference(model: SLM, onnx_path: str | Path, ids: torch.Tensor, past_len: int = 0) -> float:
    """Largest |logit_onnx − logit_torch| for ids (B, T) after a random past of past_len positions."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    past = [torch.randn(ids.shape[0], cfg.n_kv_head, past_len, cfg.head_dim, generator=g) for _ in range(2 * cfg.n_layer)]
    ref = FlatKVModel(model.eval())(ids, *past)
    feed = dict(zip(input_names(cfg.n_layer), [ids.numpy(), *[p.numpy() for p in past]], strict=True))
    outs = load_session(onnx_path).run(None, feed)
    return max(float((torch.from_numpy(o) - r).abs().max()) for o, r in zip(outs, ref, strict=True))
