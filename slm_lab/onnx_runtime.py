"""Run the exported SLM in ONNX Runtime with a KV cache: the graph's names, sessions, decoding.

This module never imports torch: on a device the runtime is ONNX Runtime + NumPy, and the peak
memory measured for it (`slm_lab.measure`) must not include PyTorch. Exporting needs torch
(`slm_lab.onnx_export`, which takes the graph's names from here); quantizing is `slm_lab.onnx_quantize`.

- `input_names` / `output_names`: the graph's inputs and outputs, the one place they are spelled.
- `DeploySpec`: what a runtime needs to drive the graph, read from the config stored in the file.
- `OnnxLM`: a session plus its spec; `forward`, `generate` (greedy or sampled, same rules as
  `SLM.generate`, so greedy tokens equal PyTorch's).
- `sample_next_numpy`: the NumPy twin of `slm_lab.model.sample_next` (temperature, top-k, top-p).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SLMLabError

META_KEY = "slm_lab.deploy_config"     # the deploy config, stored inside every .onnx file we write


def input_names(n_layer: int) -> list[str]:
    """input_ids (B, T), then past_key_i, past_value_i (B, K, P, hd) for each layer i."""
    return ["input_ids"] + [f"past_{kv}_{i}" for i in range(n_layer) for kv in ("key", "value")]


def output_names(n_layer: int) -> list[str]:
    """logits (B, T, V), then present_key_i, present_value_i (B, K, P + T, hd) for each layer i."""
    return ["logits"] + [f"present_{kv}_{i}" for i in range(n_layer) for kv in ("key", "value")]


def import_onnxruntime():
    """The onnxruntime module, or a one-line error saying how to install it."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise SLMLabError("ONNX Runtime is not installed; pip install 'slm_lab[deploy]'.") from None
    return ort


def load_session(path: str | Path, threads: int = 1):
    """An ONNX Runtime CPU session with `threads` intra-op threads and all graph optimizations on."""
    ort = import_onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise SLMLabError(f"no ONNX model at {path}; export one with `slm-lab export --ckpt DIR --format onnx --out DIR`.")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:   # ORT raises its own exception types for a corrupt or foreign file
        raise SLMLabError(f"ONNX Runtime cannot load {path} ({str(exc).splitlines()[0][:120]}); export it again.") from None


@dataclass
class DeploySpec:
    """The graph's contract: names, the KV-cache shape (B, n_kv_head, P, head_dim), the longest context."""
    n_layer: int
    n_kv_head: int
    head_dim: int
    vocab_size: int
    block_size: int

    @classmethod
    def from_session(cls, session) -> DeploySpec:
        meta = session.get_modelmeta().custom_metadata_map
        if META_KEY not in meta:
            raise SLMLabError("this ONNX file has no slm_lab deploy config; export it with slm_lab.onnx_export.")
        c = json.loads(meta[META_KEY])
        return cls(c["n_layer"], c["n_kv_head"], c["head_dim"], c["vocab_size"], c["block_size"])

    def empty_past(self, batch: int = 1) -> list[np.ndarray]:
        """2·n_layer zero-length caches (batch, n_kv_head, 0, head_dim): the past of a prefill."""
        return [np.zeros((batch, self.n_kv_head, 0, self.head_dim), np.float32) for _ in range(2 * self.n_layer)]

    def feed(self, ids: np.ndarray, past: list[np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(input_names(self.n_layer), [np.ascontiguousarray(ids, dtype=np.int64), *past], strict=True))


class OnnxLM:
    """The exported SLM in ONNX Runtime: forward with a KV cache, and generate."""

    def __init__(self, path_or_session, threads: int = 1):
        self.session = path_or_session if hasattr(path_or_session, "run") else load_session(path_or_session, threads)
        self.spec = DeploySpec.from_session(self.session)

    def forward(self, ids: np.ndarray, past: list[np.ndarray] | None = None):
        """ids (B, T) int64, past 2·n_layer arrays (B, K, P, hd) or None → logits (B, T, V), presents (B, K, P+T, hd)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 2:
            raise SLMLabError(f"ids must have shape (batch, time), got {ids.shape}.")
        past = self.spec.empty_past(ids.shape[0]) if past is None else past
        if past[0].shape[2] + ids.shape[1] > self.spec.block_size:
            raise SLMLabError(f"{past[0].shape[2] + ids.shape[1]} positions exceed block_size={self.spec.block_size}; "
                              "crop the input (generate does this for you).")
        if ids.size and (ids.min() < 0 or ids.max() >= self.spec.vocab_size):
            raise SLMLabError(f"token id {int(ids.max())} is outside the vocabulary of {self.spec.vocab_size}.")
        logits, *presents = self.session.run(None, self.spec.feed(ids, past))
        return logits, presents

    def generate(self, prompt_ids, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None) -> np.ndarray:
        """Extend prompt_ids (T,) or (B, T) by max_new_tokens → (B, T + max_new_tokens). temperature 0 is greedy.

        Same schedule as SLM.generate: prefill, then one token per step with the cache; past
        block_size tokens, restart from the last block_size tokens (a sliding window).
        """
        ids = np.atleast_2d(np.asarray(prompt_ids, dtype=np.int64))
        if ids.shape[1] == 0:
            raise SLMLabError("the prompt is empty; give at least one token.")
        rng = np.random.default_rng(seed)
        block = self.spec.block_size
        past, n_cached = None, 0
        for _ in range(max_new_tokens):
            if past is not None and ids.shape[1] <= block:
                logits, past = self.forward(ids[:, n_cached:], past)          # only the newest token
            else:
                logits, past = self.forward(ids[:, -block:])                  # (re)start: prefill
            n_cached = ids.shape[1]
            nxt = sample_next_numpy(logits[:, -1, :], temperature, top_k, top_p, rng)
            ids = np.concatenate([ids, nxt], axis=1)
            if ids.shape[1] > block:
                past = None
        return ids


def onnx_mean_loss(path_or_session, batches: list[tuple]) -> float:
    """Mean next-token cross-entropy (nats) of an ONNX model on fixed (x, y) batches of (B, T) token
    tensors, computed in NumPy: the ONNX counterpart of slm_lab.evaluate.mean_loss."""
    lm, total = OnnxLM(path_or_session), 0.0
    for x, y in batches:
        z = lm.forward(np.asarray(x))[0].astype(np.float64)
        z -= z.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        total -= float(np.take_along_axis(logp, np.asarray(y)[..., None], -1).mean())
    return total / len(batches)


def filter_logits(logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> np.ndarray:
    """Temperature, then top-k, then top-p on logits (B, V), as slm_lab.model.sample_next does; removed → -inf."""
    if temperature <= 0:
        raise SLMLabError(f"temperature={temperature} must be > 0 to sample (0 means greedy: take the argmax).")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise SLMLabError(f"top_p={top_p} must be in (0, 1].")
    z = logits.astype(np.float32) / temperature
    if top_k is not None and top_k > 0:
        kth = -np.sort(-z, axis=-1)[:, min(top_k, z.shape[-1]) - 1:min(top_k, z.shape[-1])]
        z = np.where(z < kth, -np.inf, z)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-z, axis=-1, kind="stable")
        sorted_z = np.take_along_axis(z, order, axis=-1)
        probs = _softmax(sorted_z)
        drop = np.cumsum(probs, axis=-1) - probs > top_p          # after the nucleus is already full
        sorted_z = np.where(drop, -np.inf, sorted_z)
        z = np.full_like(z, -np.inf)
        np.put_along_axis(z, order, sorted_z, axis=-1)
    return z


def sample_next_numpy(logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    """The next token for each row of logits (B, V) → (B, 1) int64; temperature 0 → argmax.
    slm_lab.model.sample_next in NumPy: the same rules, a NumPy generator instead of a torch one."""
    if temperature == 0:
        return logits.argmax(axis=-1)[:, None].astype(np.int64)
    if temperature < 0:
        raise SLMLabError(f"temperature={temperature} must be ≥ 0 (0 means greedy).")
    probs = _softmax(filter_logits(logits, temperature, top_k, top_p)).astype(np.float64)
    rng = rng or np.random.default_rng()
    u = rng.random((probs.shape[0], 1))
    cdf = np.cumsum(probs / probs.sum(-1, keepdims=True), axis=-1)
    return np.minimum((cdf < u).sum(-1, keepdims=True), probs.shape[-1] - 1).astype(np.int64)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
