"""Checks for lab 08 — on-device deployment: greedy decoding over an ONNX Runtime session with a KV cache,
and the size/latency report.

The decoding reference is PyTorch's own greedy `SLM.generate` on the model the check exports itself
(a small random model with large weights, so that every token depends on the whole context and a
wrong position or a lost cache changes the output). The session the student gets records every call,
so the check can say which step fed the wrong thing.
"""
from __future__ import annotations

import functools
import math
import statistics
import tempfile
from pathlib import Path

from ..onnx_runtime import input_names
from . import CheckFailed, Forbidden, call, fail, forbids, passed

_VOCAB, _BLOCK = 31, 48


@functools.lru_cache(maxsize=1)
def reference_model():
    """(model, onnx path): a 2-layer grouped-query Llama SLM with large random weights, exported once."""
    import torch

    from ..model import SLM, SLMConfig
    from ..onnx_export import export_onnx

    torch.manual_seed(3)
    model = SLM(SLMConfig(family="llama", vocab_size=_VOCAB, block_size=_BLOCK, n_layer=2, n_head=4, n_kv_head=2,
                          d_model=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:                  # std 1/sqrt(fan_in) · 2.5: sharp, context-dependent predictions
                p.normal_(0.0, 2.5 / math.sqrt(p.shape[1]))
    path = Path(tempfile.mkdtemp(prefix="slm_lab_m08_")) / "model.onnx"
    export_onnx(model, path)
    return model, path


class RecordingSession:
    """Wraps an ONNX Runtime session; remembers (new tokens, past length) of every run() call."""

    def __init__(self, session) -> None:
        self._session = session
        self.calls: list[tuple[int, int]] = []
        self.swapped_kv = False               # a past_key_i was the previous call's present_value_i
        self._presents: dict = {}

    def run(self, output_names, feed, *args, **kwargs):
        import numpy as np

        ids, past = (feed.get(name) for name in input_names(1)[:2])     # input_ids, past_key_0
        if ids is not None and past is not None:
            self.calls.append((int(ids.shape[-1]), int(past.shape[2])))
        key, value = (self._presents.get(f"present_{kv}_0") for kv in ("key", "value"))
        if past is not None and key is not None and value is not None and past.shape == value.shape \
                and np.array_equal(past, value) and not np.array_equal(past, key):
            self.swapped_kv = True
        outs = self._session.run(output_names, feed, *args, **kwargs)
        names = output_names or [o.name for o in self._session.get_outputs()]
        self._presents = dict(zip(names, outs, strict=False))
        return outs

    def __getattr__(self, name):              # get_inputs, get_outputs, get_modelmeta, ...
        return getattr(self._session, name)


def _reference_tokens(model, prompt: list[int], n: int) -> list[int]:
    import torch

    return model.generate(torch.tensor([prompt]), n, temperature=0)[0].tolist()


def _diagnose(calls: list[tuple[int, int]], prompt_len: int, n: int, what: str) -> None:
    """Fail on the first call that fed the wrong tokens or the wrong past."""
    if not calls:
        return
    if calls[0] != (prompt_len, 0):
        fail(f"{what}: the first call fed {calls[0][0]} tokens with a past of {calls[0][1]}; prefill feeds the "
             f"whole prompt ({prompt_len} tokens) with an empty past (length 0, spec.empty_past()).")
    seen = prompt_len
    for step, (t, p) in enumerate(calls[1:], start=1):
        if p == 0 and t > 1:
            fail(f"{what}: step {step} re-fed {t} tokens with an empty past — that recomputes the whole "
                 "sequence; feed only the newest token together with the previous call's presents.")
        if t != 1:
            fail(f"{what}: step {step} fed {t} tokens together with the cache; with a KV cache feed only the "
                 "newest token.")
        if p != seen:
            fail(f"{what}: step {step} passed a past of length {p}, but {seen} tokens were already processed — "
                 "pass the presents returned by the previous call as the next past.")
        seen += 1
    if len(calls) > n + 1:
        fail(f"{what} called the model {len(calls)} times for {n} new tokens; one prefill and {n - 1} decode "
             "steps are enough.")


def _probe_greedy(greedy_generate, onnx_bytes: bytes, prompt: list, n: int) -> dict:
    """Where the student's function lives: decode with a recording session over the model in onnx_bytes;
    what it returned (or the check's line it failed with), the session's calls, whether K and V were swapped."""
    from ..onnx_runtime import DeploySpec, load_session

    path = Path(tempfile.mkdtemp(prefix="slm_lab_m08_")) / "model.onnx"
    path.write_bytes(onnx_bytes)
    spec = DeploySpec.from_session(load_session(path))
    session = RecordingSession(load_session(path))
    seen: dict = {}
    try:
        out = call(greedy_generate, session, spec, list(prompt), n, what="greedy_generate")
        seen["out"] = out.tolist() if hasattr(out, "tolist") else out
    except Forbidden:
        raise
    except CheckFailed as exc:
        seen["failed"], seen["out"] = str(exc), None
    return {**seen, "calls": list(session.calls), "swapped_kv": session.swapped_kv}


@forbids("slm_lab.onnx_runtime.OnnxLM")
def check_greedy_decode(greedy_generate) -> None:
    """greedy_generate(session, spec, prompt_ids, max_new_tokens) → prompt + new ids, one token per step with the cache."""
    what = "greedy_generate"
    model, path = reference_model()
    onnx_bytes = Path(path).read_bytes()          # sent to where the student's function runs (its own /tmp)
    for prompt, n in (([3, 14, 15, 9, 26, 5], 12), ([7], 9)):
        ref = _reference_tokens(model, prompt, n)
        seen = call(_probe_greedy, greedy_generate, onnx_bytes, list(prompt), n, what=what)
        calls, out = [tuple(c) for c in seen["calls"]], seen["out"]
        if "failed" in seen:
            _diagnose(calls, len(prompt), n, what)    # a wrong cache often ends in an ORT shape error
            fail(seen["failed"])
        try:
            out = [int(t) for t in (out.tolist() if hasattr(out, "tolist") else out)]
        except (TypeError, ValueError):
            fail(f"{what} should return a flat list of token ids (prompt + new tokens), got {type(out).__name__}.")
        if len(out) == n and out == ref[len(prompt):]:
            fail(f"{what} returned only the {n} new tokens — return the prompt followed by them ({len(ref)} ids).")
        if len(out) != len(ref):
            fail(f"{what}(prompt of {len(prompt)}, max_new_tokens={n}) returned {len(out)} ids, expected "
                 f"{len(ref)} (the prompt + {n} new tokens).")
        if not calls:
            fail(f"{what} never called session.run — run the ONNX model to get the logits.")
        _diagnose(calls, len(prompt), n, what)
        if out[:len(prompt)] != list(prompt):
            fail(f"{what}: the returned ids do not start with the prompt.")
        if out != ref and seen["swapped_kv"]:
            fail(f"{what}: the keys and values are swapped — a past_key was fed the previous call's present_value; "
                 "pass present_key_i as past_key_i and present_value_i as past_value_i.")
        if out != ref:
            i = next(i for i, (a, b) in enumerate(zip(out, ref, strict=True)) if a != b)
            fail(f"{what}: token {i} is {out[i]}, PyTorch's greedy decoding gives {ref[i]} — take the argmax of the "
                 "logits at the last position (logits[0, -1]).")
    passed("ONNX Runtime greedy decoding", "prefill + one token per step with the KV cache; tokens equal PyTorch's")


def _ref_report(measurements: dict, baseline: str) -> dict:
    # The package has no function of this shape: slm_lab.measure's measure_in_process() and format_table()
    # compute the same medians, tokens/s and ratios inline, from their own row format.
    rows = {}
    for name, m in measurements.items():
        rows[name] = {"size_mb": m["file_bytes"] / 1e6,
                      "prefill_ms": statistics.median(m["prefill_seconds"]) * 1e3,
                      "tokens_per_s": m["new_tokens"] / statistics.median(m["decode_seconds"])}
    for row, m in zip(rows.values(), measurements.values(), strict=True):
        row["speedup"] = row["tokens_per_s"] / rows[baseline]["tokens_per_s"]
        row["size_ratio"] = m["file_bytes"] / measurements[baseline]["file_bytes"]
    return rows


def example_measurements() -> dict:
    """Raw timings as a benchmark collects them (one slow outlier run each, as on a shared machine)."""
    return {
        "pytorch fp32": {"file_bytes": 10_700_000, "new_tokens": 128,
                         "prefill_seconds": [0.021, 0.019, 0.020, 0.090, 0.020],
                         "decode_seconds": [0.70, 0.68, 0.71, 2.40, 0.69]},
        "onnxruntime fp32": {"file_bytes": 10_760_000, "new_tokens": 128,
                             "prefill_seconds": [0.0051, 0.0049, 0.0050, 0.0300, 0.0052],
                             "decode_seconds": [0.131, 0.128, 0.127, 0.600, 0.130]},
        "onnxruntime int8": {"file_bytes": 2_770_000, "new_tokens": 128,
                             "prefill_seconds": [0.0031, 0.0030, 0.0029, 0.0200, 0.0030],
                             "decode_seconds": [0.101, 0.099, 0.098, 0.500, 0.100]},
    }


_FIELDS = ("size_mb", "prefill_ms", "tokens_per_s", "speedup", "size_ratio")


@forbids("slm_lab.measure.format_table", "slm_lab.checks.m08._ref_report")
def check_report(deployment_report) -> None:
    """deployment_report(measurements, baseline) → {name: {size_mb, prefill_ms, tokens_per_s, speedup, size_ratio}}."""
    what = "deployment_report"
    data = example_measurements()
    ref = _ref_report(data, "pytorch fp32")
    out = call(deployment_report, data, "pytorch fp32", what=what)
    if not isinstance(out, dict) or set(out) != set(data):
        fail(f"{what} should return a dict with one row per configuration ({', '.join(data)}).")
    for name, row in out.items():
        missing = [f for f in _FIELDS if not isinstance(row, dict) or f not in row]
        if missing:
            fail(f"{what}: the row for {name!r} lacks {', '.join(missing)}.")
    for name in data:
        got, want = out[name], ref[name]
        m = data[name]
        for field in _FIELDS:
            value = got[field]
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                fail(f"{what}: {name!r} {field} should be a finite number, got {value!r}.")
            if math.isclose(value, want[field], rel_tol=1e-6):
                continue
            mean_tps = m["new_tokens"] / statistics.mean(m["decode_seconds"])
            if field == "tokens_per_s" and math.isclose(value, mean_tps, rel_tol=1e-6):
                fail(f"{what}: {name!r} tokens/s uses the mean decode time; one slow run (a busy neighbour) drags it "
                     f"to {value:.0f} — use the median over repeats ({want[field]:.0f}).")
            if field == "tokens_per_s" and math.isclose(value, statistics.median(m["decode_seconds"]) / m["new_tokens"],
                                                        rel_tol=1e-6):
                fail(f"{what}: {name!r} tokens_per_s is seconds per token — invert it: new_tokens / median seconds.")
            if field == "prefill_ms" and math.isclose(value, statistics.mean(m["prefill_seconds"]) * 1e3, rel_tol=1e-6):
                fail(f"{what}: {name!r} prefill_ms uses the mean; use the median over repeats.")
            if field == "prefill_ms" and math.isclose(value, want[field] / 1e3, rel_tol=1e-6):
                fail(f"{what}: {name!r} prefill_ms is in seconds — multiply by 1000.")
            if field == "size_mb" and math.isclose(value, m["file_bytes"] / 2 ** 20, rel_tol=1e-6):
                fail(f"{what}: size_mb should be bytes / 1e6 (megabytes), not / 2**20 (mebibytes).")
            if field in ("speedup", "size_ratio") and math.isclose(value, 1 / want[field], rel_tol=1e-6):
                fail(f"{what}: {name!r} {field} is inverted — divide this configuration by the baseline "
                     f"({want[field]:.2f}, not {value:.2f}).")
            fail(f"{what}: {name!r} {field} is {value:.4g}, expected {want[field]:.4g}.")
    other = "onnxruntime fp32"                  # a baseline that is not the first row
    out = call(deployment_report, data, other, what=what)
    want = _ref_report(data, other)
    for name in data:
        for field in ("speedup", "size_ratio"):
            value = out.get(name, {}).get(field) if isinstance(out, dict) and isinstance(out.get(name), dict) else None
            if not isinstance(value, (int, float)) or not math.isclose(value, want[name][field], rel_tol=1e-6):
                fail(f"{what}(baseline={other!r}): {name!r} {field} is {value!r}, expected {want[name][field]:.4g} — "
                     "divide by the row named by `baseline`, not by the first row.")
    passed("deployment report", "medians over repeats, units, ratios against any baseline")


CHECKS = {"08.greedy_decode": check_greedy_decode, "08.report": check_report}
