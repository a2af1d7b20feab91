"""Measure a deployed model on a device profile: file size, load time, prefill, decode speed, peak memory.

- `DeviceProfile`: what the target device gives us (CPU threads, a memory budget for the whole process).
- `measure_in_process`: load, prefill ms, decode tokens/s and peak resident memory of one configuration
  (PyTorch checkpoint or ONNX file) in this process.
- `run_measurement`: the same in a fresh Python process (`python -m slm_lab.measure`), so one
  configuration's memory and thread settings never pollute another's; `measure_all` does it for each
  configuration and `format_table` prints the deployment table.

Importing this module does not import torch (only the PyTorch configuration does, inside its worker),
so an ONNX Runtime worker's peak memory is ONNX Runtime + NumPy + the model.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SLMLabError
from .onnx_runtime import OnnxLM, import_onnxruntime

MiB = 2 ** 20


@dataclass
class DeviceProfile:
    """What the target device gives us: CPU threads and a memory budget for the whole process."""
    threads: int = 1
    memory_budget_mib: float = 128.0


def file_mb(path: str | Path) -> float:
    return Path(path).stat().st_size / 1e6


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


def measure_in_process(runtime: str, path: str, prompt: list[int], new_tokens: int, repeats: int = 5,
                       threads: int = 1) -> dict:
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
        import_onnxruntime()
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
    """measure_in_process(...) in a fresh Python process (its own peak memory, its own thread settings)."""
    args = {"runtime": runtime, "path": str(path), "prompt": list(map(int, prompt)), "new_tokens": new_tokens,
            "repeats": repeats, "threads": threads}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    res = subprocess.run([sys.executable, "-m", "slm_lab.measure", json.dumps(args)], capture_output=True, check=False,
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
    print(json.dumps(measure_in_process(**json.loads(sys.argv[1]))))
