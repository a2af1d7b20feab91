"""Lab 08 checks accept the reference, reject the unsolved stub and name each planted deployment mistake."""
import copy
import statistics

import numpy as np
import pytest

from slm_lab.checks import m08
from checking import rejects

pytest.importorskip("onnxruntime")


def make_decode(position=-1, cache="keep", return_prompt=True, extra_call=False):
    """A student's greedy loop with one knob per plausible mistake."""
    def greedy_generate(session, spec, prompt_ids, max_new_tokens):
        names = [f"past_{kv}_{i}" for i in range(spec.n_layer) for kv in ("key", "value")]
        empty = [np.zeros((1, spec.n_kv_head, 0, spec.head_dim), np.float32) for _ in names]
        ids = list(prompt_ids)
        feed_ids, past = ids, empty
        for step in range(max_new_tokens + (1 if extra_call else 0)):
            logits, *presents = session.run(None, {"input_ids": np.array([feed_ids], np.int64), **dict(zip(names, past))})
            if step == max_new_tokens:
                break
            ids.append(int(logits[0, position].argmax()))
            if cache == "keep":
                feed_ids, past = [ids[-1]], presents
            elif cache == "none":                         # recompute everything each step
                feed_ids, past = ids, empty
            elif cache == "stale":                        # forgets to update the past
                feed_ids, past = [ids[-1]], (presents if step == 0 else past)
            elif cache == "all_tokens":                   # feeds the whole sequence with the cache
                feed_ids, past = ids, presents
            elif cache == "swap_kv":                      # K and V caches swapped (same shapes: no error)
                feed_ids, past = [ids[-1]], [presents[i ^ 1] for i in range(len(presents))]
        return ids if return_prompt else ids[len(prompt_ids):]
    return greedy_generate


def test_greedy_decode_check():
    m08.check_greedy_decode(make_decode())
    m08.check_greedy_decode(make_decode(extra_call=True))          # one wasted call is not a mistake
    rejects(m08.check_greedy_decode, lambda *a: (_ for _ in ()).throw(NotImplementedError), match="not done yet")
    rejects(m08.check_greedy_decode, make_decode(position=0), match="take the argmax of the logits at the last position")
    rejects(m08.check_greedy_decode, make_decode(cache="none"), match="re-fed 7 tokens with an empty past")
    rejects(m08.check_greedy_decode, make_decode(cache="stale"), match="pass the presents returned by the previous call")
    rejects(m08.check_greedy_decode, make_decode(cache="all_tokens"), match="feed only the newest token")
    rejects(m08.check_greedy_decode, make_decode(return_prompt=False), match="returned only the 12 new tokens")
    # held out: K and V swapped — used to be told to take the argmax at the last position
    msg = rejects(m08.check_greedy_decode, make_decode(cache="swap_kv"), match="the keys and values are swapped")
    assert "argmax" not in msg


def test_reference_model_is_sensitive_to_position():
    """The check's model must punish reading logits at the wrong position: tokens differ early."""
    import torch

    model, _ = m08.reference_model()
    prompt = [3, 14, 15, 9, 26, 5]
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0]
    assert logits[-1].argmax() != logits[0].argmax()
    assert len(set(m08._reference_tokens(model, prompt, 12)[6:])) >= 4     # not one token repeated


def report_good(measurements, baseline):
    rows = {}
    for name, m in measurements.items():
        rows[name] = {"size_mb": m["file_bytes"] / 1e6, "prefill_ms": statistics.median(m["prefill_seconds"]) * 1e3,
                      "tokens_per_s": m["new_tokens"] / statistics.median(m["decode_seconds"])}
    base = measurements[baseline]
    for name, m in measurements.items():
        rows[name]["speedup"] = rows[name]["tokens_per_s"] / rows[baseline]["tokens_per_s"]
        rows[name]["size_ratio"] = m["file_bytes"] / base["file_bytes"]
    return rows


def report_with(change):
    def report(measurements, baseline):
        rows = report_good(measurements, baseline)
        change(rows, measurements, baseline)
        return rows
    return report


def _mean_tps(rows, ms, b):
    for n, m in ms.items():
        rows[n]["tokens_per_s"] = m["new_tokens"] / statistics.mean(m["decode_seconds"])
    for n in rows:                                       # speedups from the mean, consistently
        rows[n]["speedup"] = rows[n]["tokens_per_s"] / rows[b]["tokens_per_s"]


def test_report_check():
    m08.check_report(report_good)
    assert report_good(copy.deepcopy(m08.example_measurements()), "pytorch fp32")["onnxruntime int8"]["speedup"] > 6
    rejects(m08.check_report, lambda *a: (_ for _ in ()).throw(NotImplementedError), match="not done yet")
    rejects(m08.check_report, report_with(_mean_tps), match="uses the mean decode time")
    rejects(m08.check_report, report_with(lambda r, ms, b: [r[n].update(speedup=1 / r[n]["speedup"]) for n in r]),
            match="speedup is inverted")
    def inverted_size(r, ms, b):
        for n in r:
            r[n]["size_ratio"] = ms[b]["file_bytes"] / ms[n]["file_bytes"]
    rejects(m08.check_report, report_with(inverted_size), match="size_ratio is inverted")
    rejects(m08.check_report, report_with(lambda r, ms, b: [r[n].update(size_mb=ms[n]["file_bytes"] / 2 ** 20) for n in r]),
            match="not / 2**20")
    rejects(m08.check_report, report_with(lambda r, ms, b: [r[n].update(prefill_ms=r[n]["prefill_ms"] / 1e3) for n in r]),
            match="multiply by 1000")
    rejects(m08.check_report, report_with(lambda r, ms, b: r["onnxruntime int8"].pop("speedup")), match="lacks speedup")
    # ratios against the first row whatever `baseline` says
    rejects(m08.check_report, lambda ms, b: report_good(ms, next(iter(ms))), match="not by the first row")
