"""Checks for lab 03 — SLM vs LLM: a parameter count, KV-cache memory, training FLOPs, a decode benchmark.

References are independent of the student's formula: parameter counts come from `transformers` models
built on the meta device (real shapes, no memory), KV-cache bytes from the course model's real cache
and `slm_lab.sizing.kv_cache_bytes`, FLOPs from `slm_lab.sizing.training_flops`, decode speed from
`slm_lab.latency.time_decode` on the same model.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .. import sizing as package
from ..latency import time_decode
from . import CheckFailed, Forbidden, call, fail, forbids, passed

# Configs the student's count_params(config) receives: the course's SLMConfig keys.
_KEYS = ("family", "vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "bias",
         "tie_weights")
_ROWS = {
    "GPT-2 124M": ("gpt2", 50257, 1024, 12, 12, 12, 768, 3072, True, True),
    "SmolLM2-135M": ("llama", 49152, 8192, 30, 9, 3, 576, 1536, False, True),
    "Llama-3-8B": ("llama", 128256, 8192, 32, 32, 8, 4096, 14336, False, False),
    "a Llama-style model with biases": ("llama", 1000, 256, 3, 8, 2, 256, 704, True, False),
}
PARAM_CONFIGS: dict[str, dict[str, Any]] = {k: dict(zip(_KEYS, v, strict=True)) for k, v in _ROWS.items()}


def reference_count(config: dict) -> int:
    """Distinct parameters of the transformers model built from `config` on the meta device."""
    import transformers

    from ..hf import hf_config
    from ..model import SLMConfig

    hf = hf_config(SLMConfig(**config))
    cls = transformers.GPT2LMHeadModel if config["family"] == "gpt2" else transformers.LlamaForCausalLM
    with torch.device("meta"):
        model = cls(hf)
    return sum(p.numel() for p in model.parameters())     # parameters() yields a tied weight once


def _as_int(value, what: str) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        fail(f"{what} should return a number, got {type(value).__name__}.")
    if value != int(value):
        fail(f"{what} returned {value}, but a parameter count is a whole number.")
    return int(value)


def _param_slips(c: dict) -> dict[int, str]:
    """The count each common mistake produces (as a difference from the right count) → what went wrong."""
    D, L, H, K, F, V, P = (c[k] for k in ("d_model", "n_layer", "n_head", "n_kv_head", "d_ff", "vocab_size",
                                          "block_size"))
    hd, llama, b = D // H, c["family"] == "llama", int(c["bias"])
    slips = {}
    if c["tie_weights"]:
        slips[V * D] = ("counted the output head as well as the token embedding, but they are tied "
                        "(tie_weights=True): one V·D table, counted once")
        slips[-V * D] = "left out the token embedding table (vocab_size · d_model)"
    else:
        slips[-V * D] = "left out the output head: with tie_weights=False it is a separate vocab_size · d_model matrix"
    if K != H:
        slips[2 * L * D * (H - K) * hd] = ("used the query heads for K and V: under grouped-query attention "
                                           "k_proj and v_proj each have n_kv_head · head_dim outputs")
    if llama:
        slips[-L * D * F] = "left out SwiGLU's third matrix: gate, up and down are three d_model × d_ff matrices"
        slips[-(2 * L + 1) * D] = "forgot the RMSNorm weights: two per block plus the final norm, d_model each"
    else:
        slips[-(2 * L + 1) * 2 * D] = "forgot the LayerNorms: two per block plus the final one, weight and bias each"
        slips[-(2 * L + 1) * D] = "forgot the LayerNorm biases: GPT-2's norms have a weight and a bias"
        slips[-P * D] = "forgot GPT-2's learned position embeddings (block_size · d_model)"
    if b:
        mlp_b = (2 * F + D) if llama else (F + D)
        slips[-L * ((H + 2 * K) * hd + D + mlp_b)] = "forgot the biases of the linear layers (bias=True)"
    return slips


@forbids("slm_lab.sizing.count_parameters",
         "slm_lab.sizing.total_params",
         "slm_lab.sizing.hf_model_on_meta",
         "slm_lab.checks.m03.reference_count")
def check_param_count(count_params) -> None:
    """count_params(config: dict) → int, for the configs in PARAM_CONFIGS (SLMConfig keys)."""
    what = "count_params"
    for name, config in PARAM_CONFIGS.items():
        ref = reference_count(config)
        got = _as_int(call(count_params, dict(config), what=what), what)
        if got != ref:
            why = _param_slips(config).get(got - ref)
            if why:
                fail(f"{what}: {name}: got {got:,}, transformers builds {ref:,} — you {why}.")
            fail(f"{what}: {name}: got {got:,}, but transformers builds {ref:,} parameters (off by {got - ref:+,}); "
                 "add up embeddings, attention, MLP, norms, biases and an untied head.")
    passed("parameter count", f"equals transformers for {len(PARAM_CONFIGS)} models")


# ------------------------------------------------------------------- KV cache ----
def _dtype(bits: int) -> str:
    """A dtype name of slm_lab.sizing whose numbers take `bits` bits (32 → "fp32", 16 → "bf16", 8 → "int8")."""
    return next(name for name, size in package.BYTES_PER_PARAM.items() if size * 8 == bits)


def _measured_kv_bytes(config: dict, context: int, batch: int) -> int:
    """Bytes of the KV cache the course model actually keeps (fp32) after reading `context` tokens."""
    from ..model import SLM, SLMConfig

    torch.manual_seed(0)
    model = SLM(SLMConfig(**config)).eval()
    with torch.inference_mode():
        cache = model(torch.zeros(batch, context, dtype=torch.long), use_cache=True).kv_cache
    return sum(t.numel() * t.element_size() for layer in cache for t in layer)


@forbids("slm_lab.sizing.kv_cache_bytes", "slm_lab.sizing.memory_needed")
def check_kv_cache(kv_cache_bytes) -> None:
    """kv_cache_bytes(config: dict, context: int, batch: int, bits: int) → bytes of keys and values."""
    what = "kv_cache_bytes"
    small = dict(PARAM_CONFIGS["a Llama-style model with biases"], vocab_size=64, block_size=64)
    cases = [(small, 48, 5, 32, "a small Llama model (measured cache)"),
             (PARAM_CONFIGS["SmolLM2-135M"], 8192, 4, 16, "SmolLM2-135M, 8192 tokens, batch 4, 16-bit"),
             (PARAM_CONFIGS["Llama-3-8B"], 8192, 1, 16, "Llama-3-8B, 8192 tokens, 16-bit"),
             (PARAM_CONFIGS["Llama-3-8B"], 1000, 2, 8, "Llama-3-8B, 1000 tokens, batch 2, 8-bit"),
             (PARAM_CONFIGS["GPT-2 124M"], 1024, 1, 32, "GPT-2 124M, 1024 tokens, 32-bit")]
    for config, context, batch, bits, name in cases:
        ref = _measured_kv_bytes(config, context, batch) if bits == 32 and config is small else \
            package.kv_cache_bytes(config, context, batch, _dtype(bits))
        got = call(kv_cache_bytes, dict(config), context, batch, bits, what=what)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            fail(f"{what} should return a number of bytes, got {type(got).__name__}.")
        if math.isclose(got, ref, rel_tol=1e-9):
            continue
        other = 8 if bits != 8 else 32          # the same cache at another precision must change size
        again = call(kv_cache_bytes, dict(config), context, batch, other, what=what)
        if isinstance(again, torch.Tensor) and again.numel() == 1:
            again = again.item()
        if isinstance(again, (int, float)) and not isinstance(again, bool) and math.isclose(again, got, rel_tol=1e-9):
            fail(f"{what}: {name}: got {got:,.0f} bytes for both bits={bits} and bits={other} — the bits argument is "
                 f"ignored; each number takes bits / 8 bytes (expected {ref:,.0f}).")
        H, K, L = config["n_head"], config["n_kv_head"], config["n_layer"]
        slips = [(8, "that is bits — divide by 8 to get bytes"),
                 (H / K, "that uses the query heads; K and V are stored for the n_kv_head key/value heads only"),
                 (0.5, "missing the factor 2: both K and V are cached"),
                 (1 / L, "missing the layers: every layer keeps its own K and V"),
                 (1 / batch, "missing the batch: every sequence keeps its own cache")]
        ratio = got / ref if ref else float("inf")
        for r, why in slips:
            if r != 1 and math.isclose(ratio, r, rel_tol=1e-6):
                fail(f"{what}: {name}: got {got:,.0f} bytes, expected {ref:,.0f} — {why}.")
        fail(f"{what}: {name}: got {got:,.0f} bytes, expected {ref:,.0f} "
             "(2 · n_layer · n_kv_head · head_dim · context · batch · bits / 8).")
    passed("KV-cache memory", "matches the course model's cache and 4 real configs")


# --------------------------------------------------------------- training FLOPs ----
@forbids("slm_lab.sizing.training_flops", "slm_lab.sizing.training_cost")
def check_training_flops(training_flops) -> None:
    """training_flops(n_params, n_tokens) → FLOPs to train (forward + backward)."""
    what = "training_flops"
    for n, d in ((175e9, 300e9), (135e6, 2e12), (1e9, 20e9), (3.0, 7.0)):
        ref = package.training_flops(n, d)
        got = call(training_flops, n, d, what=what)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            fail(f"{what} should return a number of FLOPs, got {type(got).__name__}.")
        if math.isclose(got, ref, rel_tol=1e-9):
            continue
        slips = {2 * n * d: "that is the forward pass only (2 FLOPs per parameter per token); the backward pass costs "
                            "twice as much again: 6·N·D",
                 4 * n * d: "that is the backward pass only; add the forward pass: 2 + 4 = 6 FLOPs per parameter per token",
                 n * d: "a multiply-add is 2 FLOPs, and training does forward + backward: 6·N·D",
                 8 * n * d: "8·N·D counts recomputing activations, which is hardware work, not the model's 6·N·D",
                 6 * n: "the tokens are missing: every training token costs 6 FLOPs per parameter",
                 6 * d: "the parameters are missing: every parameter costs 6 FLOPs per token"}
        for wrong, why in slips.items():
            if math.isclose(got, wrong, rel_tol=1e-9):
                fail(f"{what}({n:g}, {d:g}) = {got:.4g}: {why}.")
        fail(f"{what}({n:g}, {d:g}) = {got:.4g}, expected {ref:.4g} (6 · parameters · tokens).")
    passed("training FLOPs", "6·N·D — GPT-3 (175e9 parameters, 300e9 tokens): 3.15e23")


# ------------------------------------------------------------ decode benchmark ----
# Every forward call of the check's model also sleeps: a decode step _STEP_S, a prefill _PREFILL_S. Sleep
# only gets longer on a busy machine, and it dominates the timing, so the check can demand 1.5× agreement
# and tell a timed prefill (much slower) or prompt tokens counted as generated (much faster) apart.
_STEP_S, _PREFILL_S = 0.006, 0.25


def _recording_model():
    """A small SLM that logs every forward call: (new tokens, tokens already cached)."""
    import time

    from ..model import SLM, SLMConfig

    class RecordingSLM(SLM):
        calls: list

        def forward(self, idx, targets=None, kv_cache=None, use_cache=False):
            self.calls.append((idx.shape[1], kv_cache[0][0].shape[2] if kv_cache else 0))
            time.sleep(_PREFILL_S if idx.shape[1] > 1 else _STEP_S)
            return super().forward(idx, targets, kv_cache, use_cache)

    torch.manual_seed(0)
    model = RecordingSLM(SLMConfig(family="llama", vocab_size=84, block_size=256, n_layer=4, n_head=4, d_model=128))
    model.calls = []
    return model.eval()


def _check_calls(calls: list, what: str, prompt_len: int, new_tokens: int, complete: bool = True) -> None:
    """Fail if the recorded forward calls show decoding without the KV cache or too few steps."""
    if not calls:
        fail(f"{what} never ran the model — call model(idx, ...) to generate tokens.")
    if not any(past for _, past in calls):
        fail(f"{what} never passes the KV cache: prefill with use_cache=True, then call "
             "model(next_token, kv_cache=cache) so each step reads only the newest token.")
    # A prefill reads prompt_len tokens with an empty cache; anything longer, or more than one token on top
    # of a cache, recomputes what the cache already holds.
    recomputed = [t for t, past in calls if t > prompt_len or (past and t > 1)]
    if recomputed:
        fail(f"{what} feeds {recomputed[0]} tokens in a decode step — recomputing the sequence; "
             "feed only the newest token (shape (1, 1)) with kv_cache=cache.")
    steps = sum(1 for t, past in calls if t == 1 and past)
    if complete and steps < new_tokens - 1:
        fail(f"{what} made only {steps} decode steps; generate new_tokens={new_tokens} tokens and time them.")


@forbids("slm_lab.latency.time_decode")
def check_latency(decode_tokens_per_s, prompt_len: int = 64, new_tokens: int = 32) -> None:
    """decode_tokens_per_s(model, prompt_len, new_tokens) → measured decode speed in tokens/s (with the KV cache)."""
    threads = torch.get_num_threads()
    # One thread: on a busy machine a multi-threaded step can stall waiting for a descheduled core, and a
    # check must not pass or fail with the machine's load.
    torch.set_num_threads(1)
    try:
        _check_latency(decode_tokens_per_s, prompt_len, new_tokens)
    finally:
        torch.set_num_threads(threads)


def _probe_latency(decode_tokens_per_s, prompt_len: int, new_tokens: int) -> tuple:
    """Where the student's function lives: time it on a fresh recording model, with one thread;
    ("ok", what it returned, the model's calls as (tokens, past)), or ("failed", the check's line, calls)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = _recording_model()
    try:
        return "ok", call(decode_tokens_per_s, model, prompt_len, new_tokens, what="decode_tokens_per_s"), model.calls
    except Forbidden:
        raise
    except CheckFailed as exc:
        return "failed", str(exc), model.calls
    finally:
        torch.set_num_threads(threads)


def _student_latency(decode_tokens_per_s, prompt_len: int, new_tokens: int, what: str):
    kind, got, calls = call(_probe_latency, decode_tokens_per_s, prompt_len, new_tokens, what=what)
    if kind == "failed":
        if "not done yet" not in got:      # a crash caused by misusing the cache is better explained by the calls
            _check_calls(calls, what, prompt_len, new_tokens, complete=False)
        fail(got)
    return got, calls


def _check_latency(decode_tokens_per_s, prompt_len: int, new_tokens: int) -> None:
    what = "decode_tokens_per_s"
    ref = time_decode(_recording_model(), prompt_len, new_tokens, repeats=3)
    got, calls = _student_latency(decode_tokens_per_s, prompt_len, new_tokens, what)
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)) or not math.isfinite(got) or got <= 0:
        fail(f"{what} should return a positive number of tokens per second, got {got!r}.")
    _check_calls(calls, what, prompt_len, new_tokens)
    tol = 1.5
    for _ in range(2):              # timings only get slower when disturbed: retry, keep the fastest of each
        if 1 / tol <= got / ref <= tol:
            break
        again = _student_latency(decode_tokens_per_s, prompt_len, new_tokens, what)[0]
        got = max(got, float(again.item() if isinstance(again, torch.Tensor) else again))
        ref = max(ref, time_decode(_recording_model(), prompt_len, new_tokens, repeats=3))
    if 1 / tol <= got / ref <= tol:
        passed("decode benchmark", f"{got:,.0f} tokens/s; reference {ref:,.0f} tokens/s")
        return
    if 1 / 5 <= got * ref <= 5:
        fail(f"{what} returned {got:.3g}, which looks like seconds per token; return tokens per second "
             f"(new_tokens / seconds, about {ref:,.0f} here).")
    if 1 / 5 <= got / 1000 * ref <= 5:
        fail(f"{what} returned {got:.3g}, which looks like milliseconds per token; return tokens per second.")
    if 1 / tol <= got / ref * new_tokens / (prompt_len + new_tokens) <= tol:
        fail(f"{what} returned {got:,.1f} tokens/s, about (prompt_len + new_tokens) / seconds (reference {ref:,.1f}) — "
             "count only the new tokens: the prompt is read, not generated.")
    prefill_s = _PREFILL_S + 1 / ref          # this model's prefill sleeps; its compute is about one step
    if got < ref and 1 / tol <= got * (new_tokens / ref + prefill_s) / new_tokens <= tol:
        fail(f"{what} returned {got:,.1f} tokens/s, the reference {ref:,.1f}: your timing includes the prefill "
             f"(here {_PREFILL_S * 1e3:.0f} ms) — start the clock after the prompt is processed, time only the decode loop.")
    fail(f"{what} returned {got:,.1f} tokens/s but the reference measures {ref:,.1f} on the same model — more than "
         f"{tol:g}× apart; time only the decode loop and divide the tokens generated by the seconds it took.")


CHECKS = {"03.params": check_param_count, "03.kv_cache": check_kv_cache, "03.train_flops": check_training_flops,
          "03.latency": check_latency}
