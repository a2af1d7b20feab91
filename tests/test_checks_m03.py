"""Lab 03's checks accept the reference answers, reject the unsolved stub and name planted mistakes."""
import time

import torch

from slm_lab.checks import m03
from checking import rejects, todo


# ------------------------------------------------------------- parameter count ----
def count_params(c, *, tied_twice=False, query_heads_for_kv=False, two_matrix_mlp=False, no_bias=False,
                 no_norms=False, no_positions=False, no_head=False):
    """A student-style count with switches that plant the usual mistakes."""
    D, L, H, K, F, V = c["d_model"], c["n_layer"], c["n_head"], c["n_kv_head"], c["d_ff"], c["vocab_size"]
    hd, llama, b = D // H, c["family"] == "llama", (0 if no_bias else int(c["bias"]))
    kv = H if query_heads_for_kv else K
    attn = D * H * hd + 2 * D * kv * hd + H * hd * D + b * (H * hd + 2 * kv * hd + D)
    n_mat = 2 if (two_matrix_mlp or not llama) else 3
    mlp = n_mat * D * F + b * ((2 * F if llama else F) + D)
    norm = 0 if no_norms else (2 * L + 1) * (D if llama else 2 * D)
    pos = 0 if (llama or no_positions) else c["block_size"] * D
    head = V * D if (tied_twice or not c["tie_weights"]) and not no_head else 0
    return V * D + pos + L * (attn + mlp) + norm + head


def test_param_count_check():
    m03.check_param_count(count_params)
    rejects(m03.check_param_count, todo, match="not done yet")
    rejects(m03.check_param_count, lambda c: count_params(c, tied_twice=True), match="they are tied")
    rejects(m03.check_param_count, lambda c: count_params(c, query_heads_for_kv=True), match="query heads for K and V")
    rejects(m03.check_param_count, lambda c: count_params(c, two_matrix_mlp=True), match="SwiGLU's third matrix")
    rejects(m03.check_param_count, lambda c: count_params(c, no_bias=True), match="forgot the biases")
    rejects(m03.check_param_count, lambda c: count_params(c, no_norms=True), match="LayerNorms")
    rejects(m03.check_param_count, lambda c: count_params(c, no_positions=True), match="position embeddings")
    rejects(m03.check_param_count, lambda c: count_params(c, no_head=True) if not c["tie_weights"] else count_params(c),
            match="left out the output head")
    rejects(m03.check_param_count, lambda c: count_params(c) + 1, match="off by +1")
    rejects(m03.check_param_count, lambda c: str(count_params(c)), match="should return a number")


def test_reference_count_is_transformers():
    # The check's reference is transformers itself; two famous exact values pin it down.
    assert m03.reference_count(m03.PARAM_CONFIGS["GPT-2 124M"]) == 124_439_808
    assert m03.reference_count(m03.PARAM_CONFIGS["Llama-3-8B"]) == 8_030_261_248


# --------------------------------------------------------------------- KV cache ----
def kv_good(c, context, batch, bits):
    return 2 * c["n_layer"] * c["n_kv_head"] * (c["d_model"] // c["n_head"]) * context * batch * bits / 8


def test_kv_cache_check():
    m03.check_kv_cache(kv_good)
    rejects(m03.check_kv_cache, todo, match="not done yet")
    rejects(m03.check_kv_cache, lambda c, t, b, bits: kv_good(c, t, b, bits) * 8, match="that is bits")
    rejects(m03.check_kv_cache, lambda c, t, b, bits: kv_good(dict(c, n_kv_head=c["n_head"]), t, b, bits),
            match="uses the query heads")
    rejects(m03.check_kv_cache, lambda c, t, b, bits: kv_good(c, t, b, bits) / 2, match="factor 2")
    rejects(m03.check_kv_cache, lambda c, t, b, bits: kv_good(c, t, b, bits) / c["n_layer"], match="missing the layers")
    rejects(m03.check_kv_cache, lambda c, t, b, bits: kv_good(c, t, 1, bits), match="missing the batch")
    rejects(m03.check_kv_cache, lambda c, t, b, bits: kv_good(c, t, b, bits) * 8 / b, match="expected")
    rejects(m03.check_kv_cache, lambda c, t, b, bits: kv_good(c, t, b, bits) + 1, match="expected")
    # held out: bits ignored (always 16-bit numbers) — a factor 2 off on the 32-bit case, but not "missing the factor 2"
    msg = rejects(m03.check_kv_cache, lambda c, t, b, bits: kv_good(c, t, b, 16), match="the bits argument is ignored")
    assert "factor 2" not in msg


def test_kv_reference_is_the_real_cache():
    c = dict(m03.PARAM_CONFIGS["a Llama-style model with biases"], vocab_size=64, block_size=64)
    assert m03._measured_kv_bytes(c, 48, 5) == kv_good(c, 48, 5, 32)


# --------------------------------------------------------------- training FLOPs ----
def test_training_flops_check():
    m03.check_training_flops(lambda n, d: 6 * n * d)
    rejects(m03.check_training_flops, todo, match="not done yet")
    rejects(m03.check_training_flops, lambda n, d: 2 * n * d, match="forward pass only")
    rejects(m03.check_training_flops, lambda n, d: 4 * n * d, match="backward pass only")
    rejects(m03.check_training_flops, lambda n, d: 8 * n * d, match="recomputing activations")
    rejects(m03.check_training_flops, lambda n, d: 6 * n, match="tokens are missing")
    rejects(m03.check_training_flops, lambda n, d: 6 * n * d / 1e9, match="expected")


# ------------------------------------------------------------- decode benchmark ----
def decode_good(model, prompt_len, new_tokens):
    idx = torch.randint(0, model.cfg.vocab_size, (1, prompt_len))
    with torch.inference_mode():
        out = model(idx, use_cache=True)
        cache, nxt = out.kv_cache, out.logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            out = model(nxt, kv_cache=cache)
            cache, nxt = out.kv_cache, out.logits[:, -1:].argmax(-1)
        return new_tokens / (time.perf_counter() - t0)


def decode_no_cache(model, prompt_len, new_tokens):
    idx = torch.randint(0, model.cfg.vocab_size, (1, prompt_len))
    t0 = time.perf_counter()
    with torch.inference_mode():
        for _ in range(new_tokens):
            idx = torch.cat([idx, model(idx).logits[:, -1:].argmax(-1)], dim=1)
    return new_tokens / (time.perf_counter() - t0)


def decode_recompute_with_cache(model, prompt_len, new_tokens):
    """Passes the cache, but feeds the whole sequence again on top of it (the model soon refuses)."""
    idx = torch.randint(0, model.cfg.vocab_size, (1, prompt_len))
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model(idx, use_cache=True)
        for _ in range(new_tokens):
            idx = torch.cat([idx, out.logits[:, -1:].argmax(-1)], dim=1)
            out = model(idx, kv_cache=out.kv_cache)
    return new_tokens / (time.perf_counter() - t0)


def test_latency_check():
    m03.check_latency(decode_good)
    m03.check_latency(lambda m, p, n: (m.generate(torch.zeros(1, p, dtype=torch.long), n, temperature=0), 0)[1]
                      or decode_good(m, p, n))          # generate() (which uses the cache) is fine too
    rejects(m03.check_latency, todo, match="not done yet")
    rejects(m03.check_latency, decode_no_cache, match="never passes the KV cache")
    rejects(m03.check_latency, decode_recompute_with_cache, match="recomputing the sequence")
    rejects(m03.check_latency, lambda m, p, n: 1 / decode_good(m, p, n), match="seconds per token")
    rejects(m03.check_latency, lambda m, p, n: decode_good(m, p, n // 4) and decode_good(m, p, n // 4),
            match="decode steps")
    rejects(m03.check_latency, lambda m, p, n: (decode_good(m, p, n), -1.0)[1], match="positive number")
    # held out: the prompt tokens counted as generated, and the prefill inside the timed region
    rejects(m03.check_latency, lambda m, p, n: decode_good(m, p, n) * (p + n) / n, match="count only the new tokens")
    rejects(m03.check_latency, decode_timing_prefill, match="your timing includes the prefill")


def decode_timing_prefill(model, prompt_len, new_tokens):
    idx = torch.randint(0, model.cfg.vocab_size, (1, prompt_len))
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model(idx, use_cache=True)
        cache, nxt = out.kv_cache, out.logits[:, -1:].argmax(-1)
        for _ in range(new_tokens):
            out = model(nxt, kv_cache=cache)
            cache, nxt = out.kv_cache, out.logits[:, -1:].argmax(-1)
        return new_tokens / (time.perf_counter() - t0)
