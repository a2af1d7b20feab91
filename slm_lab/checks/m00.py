"""Checks for lab 00 — why small language models: a few numbers computed from the landscape."""
from __future__ import annotations

import math

from ..sizing import weight_bytes
from . import fail, passed

# check id → (what is asked, expected value, relative tolerance, {wrong value: diagnosis})
ANSWERS: dict[str, tuple[str, float, float, dict[float, str]]] = {
    "00.fp16_memory": (
        "memory for the weights of a 7-billion-parameter model in fp16, in GB (10^9 bytes)", 14.0, 0.01,
        {112.0: "that is bits — fp16 is 16 bits = 2 bytes per parameter",
         28.0: "that is fp32 (4 bytes per parameter); fp16 uses 2",
         7.0: "that is int8 (1 byte per parameter); fp16 uses 2",
         13.04: "that is GiB (2^30 bytes); give GB (10^9 bytes)"}),
    "00.size_ratio": (
        "how many times more parameters GPT-3 (175B) has than Phi-3-mini (3.8B)", 175 / 3.8, 0.01,
        {3.8 / 175: "that is the inverse ratio — divide GPT-3's count by Phi-3-mini's"}),
    "00.opt_hardware": (
        "the hardware cost in dollars of OPT-175B's 992 A100 GPUs at about $10,000 each", 992 * 10_000, 0.01,
        {992 * 1_000: "one zero short: each GPU costs about $10,000", 992 * 100_000: "one zero too many"}),
    "00.phone_int4": (
        "the memory in GB for Phi-3-mini's 3.8B weights at int4 (4 bits each)", 1.9, 0.02,
        {15.2: "that is bits — 4 bits is half a byte", 3.8: "that is int8 (1 byte each); int4 is half a byte",
         7.6: "that is fp16; int4 is half a byte"}),
}


def check_answer(check_id: str, value) -> None:
    """Compare a computed number with the expected one; name the usual slip if it is one."""
    question, expected, tol, slips = ANSWERS[check_id]
    if value is None or value is Ellipsis:
        fail(f"{check_id}: not done yet — compute {question}.")
    try:
        value = float(value)
    except (TypeError, ValueError):
        fail(f"{check_id}: expected a number for {question}, got {type(value).__name__}.")
    if math.isclose(value, expected, rel_tol=tol):
        passed(check_id, f"{value:,.4g}")
        return
    for wrong, why in slips.items():
        if math.isclose(value, wrong, rel_tol=0.02):
            fail(f"{check_id}: {value:,.4g} is not it — {why}.")
    fail(f"{check_id}: {value:,.4g} is not {question}; check your arithmetic.")


def check_fits(answer: dict, budget_gb: float = 8.0) -> None:
    """answer: {model name: True/False}, does the model's fp16 weights fit in budget_gb? (sizes from FIT_MODELS)."""
    if answer is None:
        fail("00.fits: not done yet — replace None with your dict of True/False answers.")
    if not isinstance(answer, dict) or set(answer) != set(FIT_MODELS):
        fail(f"00.fits: give a dict with exactly these keys: {sorted(FIT_MODELS)}.")
    for name, params in FIT_MODELS.items():
        gb = weight_bytes(params, "fp16") / 1e9
        fits = gb <= budget_gb
        if bool(answer[name]) != fits:
            fail(f"00.fits: {name} ({params / 1e9:g}B parameters) needs {gb:.1f} GB in fp16, so it "
                 f"{'fits' if fits else 'does not fit'} in {budget_gb:g} GB.")
    passed("00.fits", f"{sum(answer.values())} of {len(answer)} fit in {budget_gb:g} GB at fp16")


FIT_MODELS = {"SmolLM2-360M": 362e6, "TinyLlama-1.1B": 1.1e9, "Phi-3-mini": 3.8e9, "Llama-3-8B": 8.03e9,
              "GPT-3": 175e9}

CHECKS = {**{k: (lambda v, k=k: check_answer(k, v)) for k in ANSWERS}, "00.fits": check_fits}
