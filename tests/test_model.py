"""The model: attention paths agree, causality holds, the KV cache is exact, configs fail clearly."""
import pytest
import torch

from slm_lab.errors import SLMLabError
from slm_lab.model import SLM, SLMConfig, apply_rope, rope_tables, sample_next

FAMILIES = [dict(family="gpt2"), dict(family="llama"), dict(family="llama", n_kv_head=2)]


def small(**kw) -> SLM:
    base = dict(vocab_size=37, block_size=32, n_layer=2, n_head=4, d_model=32)
    return SLM(SLMConfig(**{**base, **kw})).eval()


@pytest.mark.parametrize("kw", FAMILIES, ids=lambda k: "-".join(map(str, k.values())))
def test_explicit_and_sdpa_attention_agree(kw):
    torch.manual_seed(1)
    a = small(attn_impl="explicit", **kw)
    b = small(attn_impl="sdpa", **kw)
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 37, (3, 20))
    torch.testing.assert_close(a(x).logits, b(x).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["explicit", "sdpa"])
@pytest.mark.parametrize("kw", FAMILIES, ids=lambda k: "-".join(map(str, k.values())))
def test_future_tokens_never_change_earlier_logits(kw, impl):
    m = small(attn_impl=impl, **kw)
    x = torch.randint(0, 37, (2, 16))
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % 37          # change every token from position 10 on
    lx, ly = m(x).logits, m(y).logits
    torch.testing.assert_close(lx[:, :10], ly[:, :10], rtol=0, atol=1e-6)
    assert (lx[:, 10:] - ly[:, 10:]).abs().max() > 1e-4   # ...and later positions do see the change


@pytest.mark.parametrize("kw", FAMILIES, ids=lambda k: "-".join(map(str, k.values())))
def test_kv_cache_matches_full_recomputation_logit_for_logit(kw):
    m = small(**kw)
    x = torch.randint(0, 37, (2, 12))
    full = m(x).logits
    out = m(x[:, :5], use_cache=True)                  # prefill 5 tokens, then one token at a time
    steps = [out.logits]
    cache = out.kv_cache
    for t in range(5, 12):
        out = m(x[:, t:t + 1], kv_cache=cache)
        cache = out.kv_cache
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache[0][0].shape == (2, m.cfg.n_kv_head, 12, m.cfg.head_dim)


@pytest.mark.parametrize("kw", FAMILIES, ids=lambda k: "-".join(map(str, k.values())))
def test_cached_generation_equals_uncached_token_for_token(kw):
    m = small(**kw)
    prompt = torch.randint(0, 37, (2, 4))
    for sampling in (dict(temperature=0.0), dict(temperature=1.0, top_k=10, top_p=0.9, seed=7)):
        a = m.generate(prompt, 40, use_cache=True, **sampling)     # 44 > block_size: sliding window too
        b = m.generate(prompt, 40, use_cache=False, **sampling)
        assert torch.equal(a, b), sampling


def test_generate_is_seeded():
    m = small()
    p = torch.zeros(1, 1, dtype=torch.long)
    assert torch.equal(m.generate(p, 20, seed=3), m.generate(p, 20, seed=3))
    assert not torch.equal(m.generate(p, 20, seed=3), m.generate(p, 20, seed=4))


def test_top_k_and_top_p_filters_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen_k = {sample_next(logits, top_k=2, generator=torch.Generator().manual_seed(s)).item() for s in range(200)}
    assert seen_k == {0, 1}
    # top_p=0.7: 0.5 alone is not enough, 0.5 + 0.3 covers it → tokens {0, 1}
    seen_p = {sample_next(logits, top_p=0.7, generator=torch.Generator().manual_seed(s)).item() for s in range(200)}
    assert seen_p == {0, 1}
    assert sample_next(logits, temperature=0).item() == 0


def test_parameter_counts_match_a_hand_count():
    cfg = SLMConfig(family="gpt2", vocab_size=10, block_size=8, n_layer=1, n_head=2, d_model=4, d_ff=16)
    m = SLM(cfg)
    emb = 10 * 4 + 8 * 4
    attn = 4 * (4 * 4 + 4)
    mlp = (4 * 16 + 16) + (16 * 4 + 4)
    norms = 3 * 2 * 4
    assert m.num_parameters() == emb + attn + mlp + norms             # tied head counted once
    assert m.num_parameters(embeddings=False) == attn + mlp + norms
    untied = SLM(SLMConfig(**{**cfg.to_dict(), "tie_weights": False}))
    assert untied.num_parameters() == emb + attn + mlp + norms + 10 * 4
    llama = SLM(SLMConfig(family="llama", vocab_size=10, block_size=8, n_layer=1, n_head=2, n_kv_head=1,
                          d_model=4, d_ff=16))
    gqa_attn = 4 * 4 + 2 * (4 * 2) + 4 * 4          # q, k and v with one kv head of dim 2, o
    swiglu = 3 * 4 * 16
    assert llama.num_parameters() == 10 * 4 + gqa_attn + swiglu + 3 * 4


def test_rope_rotates_pairs_half_apart_and_preserves_norm():
    cos, sin = rope_tables(head_dim=8, length=5)
    x = torch.randn(1, 1, 5, 8)
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[..., 0, :], x[..., 0, :])            # position 0 is not rotated
    # dimension 0 pairs with dimension 4 (half-split layout, as in HF Llama)
    angle = torch.tensor(1.0)                                         # position 1, frequency 1
    expected0 = x[0, 0, 1, 0] * angle.cos() - x[0, 0, 1, 4] * angle.sin()
    torch.testing.assert_close(y[0, 0, 1, 0], expected0)


def test_head_dim_defaults_to_d_model_over_heads_and_can_be_narrower():
    cfg = SLMConfig(vocab_size=10, d_model=32, n_head=4)
    assert cfg.head_dim == 8
    old = {k: v for k, v in cfg.to_dict().items() if k != "head_dim"}      # a config.json written before the field
    assert SLMConfig.from_dict(old) == cfg
    narrow = small(family="llama", n_head=2, head_dim=8)                   # as after pruning two of four heads
    attn = narrow.blocks[0].attn
    assert (attn.q_proj.out_features, attn.o_proj.in_features, attn.o_proj.out_features) == (16, 16, 32)
    assert narrow(torch.randint(0, 37, (2, 5))).logits.shape == (2, 5, 37)


@pytest.mark.parametrize("kw, words", [
    (dict(d_model=30, n_head=4), "not divisible by n_head"),
    (dict(n_head=4, n_kv_head=3), "not a multiple of n_kv_head"),
    (dict(family="gpt2", n_kv_head=2), "grouped-query attention"),
    (dict(family="bert"), "family='bert' is unknown"),
    (dict(attn_impl="flash"), "attn_impl"),
    (dict(family="llama", head_dim=7), "RoPE needs an even head dimension"),
    (dict(head_dim=0), "head_dim=0 must be a positive integer"),
])
def test_bad_configs_raise_one_clear_error(kw, words):
    with pytest.raises(SLMLabError, match=words):
        SLMConfig(**{**dict(vocab_size=10, d_model=32, n_head=4), **kw})


def test_bad_inputs_raise_one_clear_error():
    m = small()
    with pytest.raises(SLMLabError, match="longer than block_size=32"):
        m(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(SLMLabError, match="outside the vocabulary of 37"):
        m(torch.full((1, 4), 40))
    with pytest.raises(SLMLabError, match="integer dtype"):
        m(torch.zeros(1, 4))
