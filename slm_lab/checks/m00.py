"""Checks for lab 00 — why small language models: a few numbers computed from the landscape."""
from __future__ import annotations

import math
from typing import Any

from ..sizing import weight_bytes
from . import call, fail, forbids, passed

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


# (models, budget in GB, bits per weight): a model exactly at the budget fits; 3.2B at 4 bits is 1.6 GB.
_FITS_IN_CASES = (
    ({"SmolLM2-360M": 362e6, "Llama-3-8B": 8.03e9, "exactly 8 GB": 4e9, "8.3 GB": 4.15e9}, 8.0, 16),
    ({"Phi-3-mini": 3.8e9, "Llama-3-8B": 8.03e9, "Llama-3-70B": 70.6e9}, 8.0, 4),
    ({"TinyLlama-1.1B": 1.1e9, "Llama-3.2-3B": 3.2e9, "exactly 7 GB": 7e9, "10 GB": 10e9}, 7.0, 8),
    ({"Llama-3.2-3B": 3.2e9, "GPT-3": 175e9}, 1.6, 4),
)


def _fits_in(models: dict, budget_gb: float, bits: int, gb: float = 1e9, bytes_per_bit: float = 1 / 8,
             strict: bool = False) -> dict:
    """The reference and its mistakes: GB = 10^9 bytes, bits / 8 bytes per weight, a model at the budget fits."""
    size = {name: n * bits * bytes_per_bit / gb for name, n in models.items()}
    return {name: (s < budget_gb if strict else s <= budget_gb + 1e-9) for name, s in size.items()}


@forbids("slm_lab.sizing.weight_bytes", "slm_lab.sizing.fits", "slm_lab.sizing.memory_needed")
def check_fits_in(fits_in) -> None:
    """fits_in(models: {name: parameters}, budget_gb, bits) → {name: True/False}: do the weights at `bits`
    bits each fit in budget_gb GB (10^9 bytes)?"""
    what = "fits_in"
    answers = []
    for models, budget, bits in _FITS_IN_CASES:
        got = call(fits_in, dict(models), budget, bits, what=f"{what}(…, budget_gb={budget:g}, bits={bits})")
        if not isinstance(got, dict) or set(got) != set(models):
            fail(f"{what} should return a dict with one True/False per model ({', '.join(models)}).")
        answers.append({k: bool(v) for k, v in got.items()})
    if all(got == _fits_in(*case) for got, case in zip(answers, _FITS_IN_CASES, strict=True)):
        passed("fits_in", f"{len(_FITS_IN_CASES)} budgets and bit widths, the boundary included")
        return
    slips: dict[str, dict[str, Any]] = {
             "a model exactly at the budget fits: compare with <=, not <": {"strict": True},
             "that is GiB (2^30 bytes); the budget is in GB (10^9 bytes)": {"gb": 2**30},
             "bits taken as bytes — a weight of `bits` bits takes bits / 8 bytes": {"bytes_per_bit": 1.0},
             "the bits argument is ignored — use it, not a fixed 2 bytes (fp16)": {"bits": 16}}
    for why, change in slips.items():          # the mistake that gives every answer the student's function gave
        if all(got == _fits_in(**{"models": m, "budget_gb": b, "bits": k, **change})
               for got, (m, b, k) in zip(answers, _FITS_IN_CASES, strict=True)):
            fail(f"{what}: {why}.")
    for got, (models, budget, bits) in zip(answers, _FITS_IN_CASES, strict=True):
        want = _fits_in(models, budget, bits)
        if got != want:
            name = next(n for n in models if got[n] != want[n])
            fail(f"{what}(budget_gb={budget:g}, bits={bits}): {name} ({models[name] / 1e9:g}B parameters) needs "
                 f"{models[name] * bits / 8 / 1e9:.2f} GB, so it {'fits' if want[name] else 'does not fit'}.")


FIT_MODELS = {"SmolLM2-360M": 362e6, "TinyLlama-1.1B": 1.1e9, "Phi-3-mini": 3.8e9, "Llama-3-8B": 8.03e9,
              "GPT-3": 175e9}

CHECKS = {**{k: (lambda v, k=k: check_answer(k, v)) for k in ANSWERS}, "00.fits": check_fits,
          "00.fits_in": check_fits_in}
