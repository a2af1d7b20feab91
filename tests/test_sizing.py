"""slm_lab.sizing and slm_lab.latency against independent references: transformers models built on
the meta device, the course's own SLM, torch's FLOP counter, the KV cache the model really keeps,
and the published numbers the course quotes."""

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from slm_lab import latency, sizing
from slm_lab.errors import SLMLabError
from slm_lab.model import SLM, SLMConfig, default_d_ff
from slm_lab.train import PRESETS

BUILDABLE = [c for c in sizing.REGISTRY.values() if c.hf_class]


def n_distinct(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())      # a tied weight is yielded once


@pytest.mark.parametrize("card", BUILDABLE, ids=lambda c: c.name)
def test_count_equals_transformers_to_the_parameter(card):
    model = sizing.hf_model_on_meta(card)
    count = sizing.count_parameters(card)
    assert count.total == n_distinct(model)
    assert count.embedding == model.get_input_embeddings().weight.numel()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == card.tie_weights and (count.head == 0) == tied


def test_every_public_architecture_but_phi3_small_is_checked_against_transformers():
    unbuildable = [c.name for c in sizing.REGISTRY.values() if c.public and not c.hf_class]
    assert unbuildable == ["Phi-3-small"]


def test_phi3_small_matches_its_layer_shapes():
    """Phi-3-small is not in transformers: rebuild its module shapes (modeling_phi3_small.py) independently."""
    c = sizing.card("Phi-3-small")
    D, H, K, F, hd = c.d_model, c.n_head, c.kv_heads, c.d_ff, c.head_dim

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_layernorm, self.post_attention_layernorm = nn.LayerNorm(D), nn.LayerNorm(D)
            self.query_key_value = nn.Linear(D, (H + 2 * K) * hd)
            self.dense = nn.Linear(H * hd, D)
            self.up_proj = nn.Linear(D, 2 * F)            # GEGLU: gate and up fused
            self.down_proj = nn.Linear(F, D)

    with torch.device("meta"):
        emb = nn.Embedding(c.vocab_size, D)
        n = emb.weight.numel() + c.n_layer * n_distinct(Layer()) + n_distinct(nn.LayerNorm(D))
    assert sizing.count_parameters(c).total == n
    assert round(n / 1e7) == 739          # the published 7.39B


@pytest.mark.parametrize("name", ["GPT-2 124M", "SmolLM2-135M", "TinyLlama-1.1B", "Llama-3-8B"])
def test_registry_shapes_build_as_the_course_model(name):
    card = sizing.card(name)
    with torch.device("meta"):
        model = SLM(card.slm_config())
    assert model.num_parameters() == sizing.count_parameters(card).total


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_course_presets(preset):
    cfg = PRESETS[preset].model_config(84)
    card = sizing.course_cards(84)[f"course {preset}"]
    assert card.params == SLM(cfg).num_parameters() == sizing.count_parameters(cfg).total
    assert sizing.count_parameters(cfg.to_dict()).total == card.params      # a plain dict works too


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_d_ff_default_has_one_home(family):
    """A config without d_ff: sizing, the registry and the model all take model.default_d_ff."""
    assert default_d_ff("gpt2", 768) == 3072 and default_d_ff("llama", 128) == 352     # 8/3 · 128 → 352
    for d in (48, 104, 768):
        cfg = SLMConfig(family=family, vocab_size=50, block_size=16, n_layer=1, n_head=4, d_model=d)
        assert cfg.d_ff == default_d_ff(family, d)
        with torch.device("meta"):
            built = SLM(cfg).num_parameters()
        as_dict = {k: v for k, v in cfg.to_dict().items() if k not in ("d_ff", "head_dim")}
        assert sizing.count_parameters(as_dict).total == built
    gpt2 = sizing.card("GPT-2 124M")                       # its config.json leaves n_inner unset: 4·D
    assert gpt2.d_ff == default_d_ff("gpt2", 768) and gpt2.head_dim == 64


def test_head_dim_comes_from_the_config_not_from_d_model():
    """Heads pruned from 4 × 16 to 2 × 16 at d_model 64: attention, FLOPs and the KV cache all shrink."""
    full = SLMConfig(family="llama", vocab_size=50, block_size=64, n_layer=2, n_head=4, n_kv_head=2, d_model=64)
    narrow = SLMConfig.from_dict({**full.to_dict(), "n_head": 2, "n_kv_head": 1, "head_dim": 16})
    card = sizing.card_from_config("narrow", narrow)
    assert card.head_dim == 16 and card.slm_config() == narrow
    D, L, hd = 64, 2, 16
    assert sizing.count_parameters(narrow).attention == L * (D * 2 * hd + 2 * D * hd + 2 * hd * D)
    assert sizing.kv_cache_bytes(narrow, 100, 1, "fp32") == 2 * L * 1 * hd * 100 * 4
    assert (sizing.forward_flops_per_token(full, 100) - 2 * sizing.matmul_parameters(full)
            == 2 * (sizing.forward_flops_per_token(narrow, 100) - 2 * sizing.matmul_parameters(narrow)))


def test_headline_counts_are_close_to_exact_ones():
    for c in sizing.REGISTRY.values():
        if c.public and not c.name.startswith("GPT-2"):
            assert 0.9 < sizing.count_parameters(c).total / c.params < 1.1, c.name
    # GPT-2's paper undercounted: 117M in its table, 124,439,808 built.
    assert sizing.count_parameters(sizing.card("GPT-2 124M")).total == 124_439_808


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_forward_flops_match_torch_flop_counter(family):
    cfg = SLMConfig(family=family, vocab_size=100, block_size=64, n_layer=3, n_head=4,
                    n_kv_head=2 if family == "llama" else 4, d_model=64, attn_impl="explicit")
    model = SLM(cfg).eval()
    with torch.no_grad():
        cache = model(torch.zeros(1, 20, dtype=torch.long), use_cache=True).kv_cache
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)
    assert counter.get_total_flops() == sizing.forward_flops_per_token(cfg, context=21)


def test_kv_cache_bytes_equal_the_cache_the_model_keeps():
    cfg = SLMConfig(family="llama", vocab_size=50, block_size=64, n_layer=3, n_head=6, n_kv_head=2, d_model=48)
    with torch.no_grad():
        cache = SLM(cfg).eval()(torch.zeros(4, 37, dtype=torch.long), use_cache=True).kv_cache
    kept = sum(t.numel() * t.element_size() for layer in cache for t in layer)
    assert sizing.kv_cache_bytes(cfg, context=37, batch=4, dtype="fp32") == kept
    # Llama-3-8B at 8k context in bf16: 2·32·8·128·8192·2 bytes = 1 GiB exactly.
    assert sizing.kv_cache_bytes(sizing.card("Llama-3-8B"), 8192, 1, "bf16") == 2**30


def test_training_compute_and_chinchilla():
    assert sizing.training_flops(175e9, 300e9) == pytest.approx(3.15e23)
    for n, tokens in sizing.CHINCHILLA_TABLE:                   # exact at the paper's rows
        assert sizing.chinchilla_tokens(n) == pytest.approx(tokens)
    assert 20 <= sizing.chinchilla_tokens(3e9) / 3e9 <= 20.5     # about 20 tokens per parameter in between
    cost = sizing.training_cost(1e9, 20e9, "A100 80 GB", utilization=0.5, price_per_hour=2.0)
    assert cost.gpu_hours == pytest.approx(6 * 1e9 * 20e9 / (312e12 * 0.5) / 3600)
    assert cost.dollars == pytest.approx(cost.gpu_hours * 2.0) and cost.days_on(10) == pytest.approx(cost.gpu_hours / 240)


def test_claims_from_the_course_material():
    got = {c.claim.split(" ")[0] + c.claim.split(" ")[1]: c for c in sizing.claims()}
    assert got["GPT-3has"].ratio == pytest.approx(174_604_259_328 / 175e9)
    assert got["GPT-3training"].ratio == pytest.approx(1.0, abs=0.01)     # the paper's 3.14e23 FLOPs
    assert got["OPT-175B's992"].estimate == 9.92e6
    assert 10 < got["OPT-175Btrained"].estimate < 20          # pure compute ≈ 15 days, the real run ≈ 2 months
    assert 0.5 < got["GPT-4cost"].ratio < 2                   # "over $100M" is plausible under the rumours
    assert [round(c.estimate / 1e9, 1) for c in sizing.claims() if c.claim.startswith("Phi-3")] == [3.8, 7.4, 14.0]


def test_memory_and_what_fits_where():
    assert sizing.weight_bytes(7e9, "fp16") == 14e9 and sizing.weight_bytes(3.8e9, "int4") == 1.9e9
    smol, llama8, llama70 = (sizing.card(n) for n in ("SmolLM2-135M", "Llama-3-8B", "Llama-3-70B"))
    assert sizing.fits(smol, "phone 8 GB", "bf16", context=8192)
    assert not sizing.fits(llama8, "laptop 16 GB", "bf16") and sizing.fits(llama8, "laptop 16 GB", "int4")
    assert not sizing.fits(llama70, "H100 80 GB", "bf16") and sizing.fits(llama70, "H100 80 GB", "int4", 8192)
    assert sizing.memory_needed(sizing.card("Gemini Nano-2"), "int4") == 3.25e9 / 2   # published size only


def test_roofline_regimes_and_serving_cost():
    smol, llama70 = sizing.card("SmolLM2-135M"), sizing.card("Llama-3-70B")
    h100 = sizing.HARDWARE["H100 80 GB"]
    t = latency.decode_seconds(smol, h100, "bf16", context=0, batch=1)
    assert t == pytest.approx(sizing.matmul_parameters(smol) * 2 / h100.bandwidth)      # batch 1: bytes-bound
    big = latency.decode_seconds(smol, h100, "bf16", context=0, batch=4096)
    assert big == pytest.approx(4096 * sizing.forward_flops_per_token(smol, 0) / h100.flops)   # large batch: FLOPs
    p = latency.prefill_seconds(smol, h100, "bf16", prompt=2048)
    assert p == pytest.approx((2 * sizing.matmul_parameters(smol) * 2048
                               + 4 * 30 * 9 * 64 * 2048 * 2049 / 2) / h100.flops)
    s, l = latency.serving_cost(smol), latency.serving_cost(llama70)
    assert s.n_devices == 1 and l.n_devices == 3                # 141 GB of weights + 32 KV caches of 2048 tokens
    assert l.dollars_per_million / s.dollars_per_million > 50


def test_bad_input_is_one_clear_sentence():
    for call, words in [(lambda: sizing.card("GPT-5"), "no model called"),
                        (lambda: sizing.count_parameters(sizing.card("Gemini Nano-1")), "not public"),
                        (lambda: sizing.card("Phi-3-small").slm_config(), "cannot be built"),
                        (lambda: sizing.weight_bytes(1e9, "int3"), "dtype"),
                        (lambda: sizing.count_parameters({"family": "gpt2", "d_model": 64}), "needs positive"),
                        (lambda: sizing.count_parameters({"family": "opt", "d_model": 64, "n_layer": 2, "n_head": 4,
                                                          "vocab_size": 10, "block_size": 8}), "needs head_dim"),
                        (lambda: sizing.count_parameters({**SLMConfig().to_dict(), "n_heads": 4}), "unknown fields"),
                        (lambda: sizing.training_cost(1e9, 1e9, utilization=40), "fraction"),
                        (lambda: latency.serving_cost(sizing.card("SmolLM2-135M"), "phone 8 GB"), "no hourly price"),
                        (lambda: sizing.hardware("TPU"), "no hardware")]:
        with pytest.raises(SLMLabError) as info:
            call()
        msg = str(info.value)
        assert words in msg and "\n" not in msg and msg.endswith(".")


def test_decode_timing_uses_the_kv_cache():
    """time_decode passes the check a student's benchmark must pass (single-token steps on the cache)."""
    from slm_lab.checks import m03

    m03.check_latency(lambda model, p, n: latency.time_decode(model, p, n, repeats=1))
    cfg = SLMConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, d_model=16)
    with pytest.raises(SLMLabError, match="exceeds block_size"):
        latency.time_decode(SLM(cfg), prompt_len=10, new_tokens=10)


def test_measured_rates_are_physical():
    read, copy = latency.measure_bandwidth(megabytes=32, repeats=3)
    flops = latency.measure_matmul_flops(n=256, repeats=3)
    # A CPU core streams 1-100 GB/s and multiplies at 1-1000 GFLOP/s; a broken unit would be off by 1e3+.
    assert 1e9 < read < 1e12 and 1e9 < copy < 1e12 and 1e9 < flops < 1e13


def test_prepack_keeps_values_shapes_and_ties():
    cfg = SLMConfig(family="llama", vocab_size=50, block_size=32, n_layer=2, n_head=4, n_kv_head=2, d_model=64)
    model = SLM(cfg).eval()
    x = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        before = model(x).logits
        latency.prepack_for_decode(model)
        after = model(x).logits
    assert torch.allclose(before, after, atol=1e-5)
    assert model.lm_head.weight is model.tok_emb.weight                       # still tied
    q = model.blocks[0].attn.q_proj.weight
    assert q.shape == (64, 64) and q.stride() == (1, 64)                      # transposed storage
    assert model.num_parameters() == sizing.count_parameters(cfg).total


def test_skinny_twin_runs_the_same_operators_on_almost_no_weights():
    cfg = sizing.card("SmolLM2-135M").slm_config()
    twin = latency.skinny_twin(cfg)
    with torch.device("meta"):
        big, small = SLM(cfg), SLM(twin)
    assert [type(m).__name__ for m in big.modules()] == [type(m).__name__ for m in small.modules()]
    assert (twin.n_layer, twin.n_head, twin.n_kv_head, twin.family) == (30, 9, 3, "llama")
    assert small.num_parameters() < big.num_parameters() / 200


# ------------------------------------------------------------- bytes a decode step reads ----
def _course_model(tie: bool = True) -> SLM:
    torch.manual_seed(0)
    return SLM(SLMConfig(family="llama", vocab_size=65, n_layer=2, n_head=4, d_model=64, block_size=32,
                         tie_weights=tie)).eval()


def test_decode_read_bytes_counts_by_hand():
    """Every weight once; an untied embedding table is a row lookup (not read in full); a tied one is the head."""
    from slm_lab.quantize import quantize_model

    tied, untied = _course_model(True), _course_model(False)
    buffers = sum(b.numel() * b.element_size() for b in tied.buffers())           # RoPE tables, read too
    params = sum(p.numel() for p in tied.parameters()) * 4
    assert latency.decode_read_bytes(tied) == params + buffers
    table = untied.tok_emb.weight.numel() * 4
    assert latency.decode_read_bytes(untied) == sum(p.numel() for p in untied.parameters()) * 4 + buffers - table
    # int8 per channel, tied: the shared integers (1 byte each) and scales (fp16) count once, through the head
    q = quantize_model(tied, 8, None)
    lin = [m for m in q.modules() if type(m).__name__ == "QuantizedLinear"]
    ints = sum(m.qweight.ints.numel() + 2 * m.qweight.scale.numel() for m in lin)
    norms = sum(p.numel() * 4 for n, p in q.named_parameters())
    assert latency.decode_read_bytes(q) == ints + norms + buffers


def test_weight_read_bandwidth_is_bytes_over_time(monkeypatch):
    """With a clock that advances 2 ms per reading, each repeat must report every tensor's bytes / 2 ms."""
    model = _course_model()
    n_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    clock = iter(range(0, 10**6, 2))
    monkeypatch.setattr(latency.time, "perf_counter", lambda: next(clock) / 1e3)
    samples = latency.weight_read_bandwidth(model, repeats=4)
    assert samples == pytest.approx([n_bytes / 2e-3] * 4)


def test_decode_read_bytes_sees_torch_dynamic_int8_weights():
    """torch.ao keeps its int8 weights in packed params, not parameters: they must still count."""
    from slm_lab.quantize import torch_dynamic_int8

    model = _course_model()
    d = torch_dynamic_int8(model)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    ints = sum(m.weight.numel() for m in linears)                   # one byte per int8 weight, at least
    assert ints <= latency.decode_read_bytes(d) <= 1.2 * ints + 10**5        # + scales, norms, RoPE tables
