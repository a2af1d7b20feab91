"""On-device deployment: run the exported SLM in ONNX Runtime with a KV cache, quantize it, measure it.

This module never imports torch: on a device the runtime is ONNX Runtime + NumPy, and the peak
memory we measure for it must not include PyTorch. (Exporting needs torch: `slm_lab.onnx_export`.)

- `OnnxLM`: a session plus its cache shapes; `forward`, `generate` (greedy or sampled, same rules
  as `SLM.generate`, so greedy tokens equal PyTorch's).
- `quantize_int8` (dynamic int8: int8 weights, activations quantized on the fly per call) and
  `quantize_int4` (weight-only 4-bit blocks, the MatMulNBits operator).
- `measure`: load time, prefill ms, decode tokens/s and peak resident memory of one configuration,
  run in a fresh process per configuration (`run_measurement`) so one does not pollute another.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import SLMLabError

META_KEY = "slm_lab.deploy_config"     # the deploy config, stored inside every .onnx file we write
MiB = 2 ** 20


@dataclass
class DeviceProfile:
    """What the target device gives us: CPU threads and a memory budget for the whole process."""
    threads: int = 1
    memory_budget_mib: float = 128.0


def _ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise SLMLabError("ONNX Runtime is not installed; pip install 'slm_lab[deploy]'.") from None
    return ort


def load_session(path: str | Path, threads: int = 1):
    """An ONNX Runtime CPU session with `threads` intra-op threads and all graph optimizations on."""
    ort = _ort()
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
    def from_session(cls, session) -> "DeploySpec":
        meta = session.get_modelmeta().custom_metadata_map
        if META_KEY not in meta:
            raise SLMLabError("this ONNX file has no slm_lab deploy config; export it with slm_lab.onnx_export.")
        c = json.loads(meta[META_KEY])
        return cls(c["n_layer"], c["n_kv_head"], c["head_dim"], c["vocab_size"], c["block_size"])

    def empty_past(self, batch: int = 1) -> list[np.ndarray]:
        """2·n_layer zero-length caches (batch, n_kv_head, 0, head_dim): the past of a prefill."""
        return [np.zeros((batch, self.n_kv_head, 0, self.head_dim), np.float32) for _ in range(2 * self.n_layer)]

    def feed(self, ids: np.ndarray, past: list[np.ndarray]) -> dict[str, np.ndarray]:
        names = ["input_ids"] + [f"past_{kv}_{i}" for i in range(self.n_layer) for kv in ("key", "value")]
        return dict(zip(names, [np.ascontiguousarray(ids, dtype=np.int64), *past]))


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
            nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, rng)
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


def sample_next(logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """The next token for each row of logits (B, V) → (B, 1) int64; temperature 0 → argmax."""
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


# --------------------------------------------------------------- quantization ----
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


def quantize_int8(src: str | Path, dst: str | Path, per_channel: bool = False) -> Path:
    """Dynamic int8: MatMul weights stored as int8 with a scale; activations quantized on the fly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    with atomic_path(dst, suffix=".tmp.onnx") as tmp, _quiet():
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=per_channel)
        _copy_metadata(src, tmp)
    return dst


def quantize_int4(src: str | Path, dst: str | Path, block_size: int = 32) -> Path:
    """Weight-only int4 in blocks of `block_size` along the input dimension (MatMulNBits); fp32 compute."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    src, dst = Path(src), Path(dst)
    with atomic_path(dst, suffix=".tmp.onnx") as tmp, _quiet():
        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)
        quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=DefaultWeightOnlyQuantConfig(
            block_size=block_size, is_symmetric=True))
        quantizer.process()
        quantizer.model.save_model_to_file(str(tmp), use_external_data_format=False)
        _copy_metadata(src, tmp)
    return dst


def file_mb(path: str | Path) -> float:
    return Path(path).stat().st_size / 1e6


# ---------------------------------------------------------------- measurement ----
def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB.

    Linux: VmHWM from /proc/self/status — the high-water mark of this program's own memory. (ru_maxrss is
    not used there: Linux carries it over from the parent across fork + exec, so a worker started by a
    300 MiB notebook kernel would report at least 300 MiB.) Elsewhere: ru_maxrss (bytes on macOS).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MiB if sys.platform == "darwin" else peak / 1024


def measure(runtime: str, path: str, prompt: list[int], new_tokens: int, repeats: int = 5, threads: int = 1) -> dict:
    """Time one configuration in this process: load, prefill (the prompt), greedy decode (new_tokens).

    runtime: "pytorch" (path = a checkpoint directory) or "onnxruntime" (path = a .onnx file).
    Meant to run in a fresh process (see run_measurement): peak memory covers imports + model + cache.
    """
    rss_start = peak_rss_mib()
    if runtime == "pytorch":
        import torch

        from .checkpoint import load_checkpoint

        torch.set_num_threads(threads)
        rss_import = peak_rss_mib()
        t0 = time.perf_counter()
        model = load_checkpoint(path).model
        load_s = time.perf_counter() - t0
        block = model.cfg.block_size

        def run_once():
            with torch.inference_mode():
                ids = torch.tensor([prompt])
                t0 = time.perf_counter()
                out = model(ids, use_cache=True)
                t1 = time.perf_counter()
                tokens = []
                for _ in range(new_tokens):
                    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                    tokens.append(int(nxt))
                    out = model(nxt, kv_cache=out.kv_cache)
                return t1 - t0, time.perf_counter() - t1, tokens
    elif runtime == "onnxruntime":
        _ort()
        rss_import = peak_rss_mib()
        t0 = time.perf_counter()
        lm = OnnxLM(path, threads=threads)
        load_s = time.perf_counter() - t0
        block = lm.spec.block_size

        def run_once():
            t0 = time.perf_counter()
            logits, past = lm.forward(np.array([prompt], np.int64))
            t1 = time.perf_counter()
            tokens = []
            for _ in range(new_tokens):
                nxt = logits[:, -1].argmax(-1)[:, None]
                tokens.append(int(nxt[0, 0]))
                logits, past = lm.forward(nxt, past)
            return t1 - t0, time.perf_counter() - t1, tokens
    else:
        raise SLMLabError(f"runtime {runtime!r} is unknown; use 'pytorch' or 'onnxruntime'.")
    if len(prompt) + new_tokens > block:
        raise SLMLabError(f"a {len(prompt)}-token prompt plus {new_tokens} new tokens exceeds block_size={block}; "
                          "measure fewer tokens so the KV cache never slides.")
    run_once()                                                    # warm-up: first-call allocations
    runs = [run_once() for _ in range(repeats)]
    prefill = float(np.median([r[0] for r in runs]))
    decode = float(np.median([r[1] for r in runs]))
    return {"runtime": runtime, "path": str(path), "threads": threads, "prompt_tokens": len(prompt),
            "new_tokens": new_tokens, "repeats": repeats, "load_s": load_s, "prefill_ms": prefill * 1e3,
            "decode_tokens_per_s": new_tokens / decode, "prefill_s_runs": [r[0] for r in runs],
            "decode_s_runs": [r[1] for r in runs],
            "rss_start_mib": rss_start, "rss_after_import_mib": rss_import, "peak_rss_mib": peak_rss_mib(),
            "torch_imported": "torch" in sys.modules, "tokens": runs[0][2]}


def run_measurement(runtime: str, path: str | Path, prompt: list[int], new_tokens: int, repeats: int = 5,
                    threads: int = 1, timeout: float = 600) -> dict:
    """measure(...) in a fresh Python process (its own peak memory, its own thread settings)."""
    args = {"runtime": runtime, "path": str(path), "prompt": list(map(int, prompt)), "new_tokens": new_tokens,
            "repeats": repeats, "threads": threads}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    res = subprocess.run([sys.executable, "-m", "slm_lab.deploy", json.dumps(args)], capture_output=True,
                         text=True, env=env, timeout=timeout)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise SLMLabError(f"measuring {runtime} on {path} failed: {last}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure_all(configs: dict[str, tuple[str, str | Path, str | Path]], prompt: list[int], new_tokens: int,
                repeats: int = 5, profile: DeviceProfile | None = None, progress: bool = True) -> list[dict]:
    """One row per configuration {name: (runtime, model path, file whose size counts)}, each measured in its
    own process under the device profile: size, load, prefill, decode, peak memory, within budget or not."""
    profile = profile or DeviceProfile()
    rows = []
    items = list(configs.items())
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="measure", leave=False)
    for name, (runtime, path, weights_file) in items:
        r = run_measurement(runtime, path, prompt, new_tokens, repeats=repeats, threads=profile.threads)
        rows.append({"name": name, "runtime": runtime, "file_mb": file_mb(weights_file), **r,
                     "within_budget": r["peak_rss_mib"] <= profile.memory_budget_mib})
    return rows


def format_table(rows: list[dict], baseline: str | None = None) -> str:
    """The deployment table as aligned text (speed-up and size against `baseline`, default the first row)."""
    base = next((r for r in rows if r["name"] == baseline), rows[0])
    head = (f"{'configuration':<18} {'file MB':>8} {'× size':>7} {'load ms':>8} {'prefill ms':>10} "
            f"{'decode tok/s':>12} {'× speed':>8} {'peak MiB':>9} {'budget':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['name']:<18} {r['file_mb']:>8.2f} {r['file_mb'] / base['file_mb']:>7.2f} "
                     f"{r['load_s'] * 1e3:>8.0f} {r['prefill_ms']:>10.1f} {r['decode_tokens_per_s']:>12.0f} "
                     f"{r['decode_tokens_per_s'] / base['decode_tokens_per_s']:>8.2f} {r['peak_rss_mib']:>9.0f} "
                     f"{'fits' if r['within_budget'] else 'over':>7}")
    return "\n".join(lines)


if __name__ == "__main__":      # the worker behind run_measurement
    print(json.dumps(measure(**json.loads(sys.argv[1]))))
