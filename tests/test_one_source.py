"""One source for every size. For each course preset, a pruned model and a grouped-query Llama, what
`slm_lab.sizing` predicts from the config equals what the model really holds — its parameter tensors,
the KV cache its forward pass keeps, the FLOPs torch counts — and the model survives the round trip
through `transformers` with the same logits."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from slm_lab import sizing
from slm_lab.errors import SLMLabError
from slm_lab.hf import from_hf, to_hf
from slm_lab.model import SLM, SLMConfig
from slm_lab.prune import prune_structured
from slm_lab.train import PRESETS

V = 65


def ids(seed: int, B: int, T: int) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def randomised(model: SLM) -> SLM:
    """Norms start at 1 and biases at 0; randomise them so a dropped or swapped one would show."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(0.5, 0.3)
    return model.eval()


def preset(name: str):
    return lambda: SLM(PRESETS[name].model_config(vocab_size=V))


def pruned_llama() -> SLM:
    """4 heads of 8 in 2 kv groups → 1 group (2 heads of 8, so n_head · head_dim = 16 < d_model = 32)."""
    model = SLM(SLMConfig(family="llama", vocab_size=V, block_size=32, n_layer=2, n_head=4, n_kv_head=2, d_model=32))
    return prune_structured(model.eval(), [(ids(s, 2, 16), None) for s in range(2)], n_kv_head=1, d_ff=40)


def pruned_gpt2() -> SLM:
    """4 heads of 8 → 2 (biases too): sizing counts it exactly, but transformers' GPT-2 cannot express it."""
    model = SLM(SLMConfig(family="gpt2", vocab_size=V, block_size=32, n_layer=2, n_head=4, d_model=32, bias=True))
    return prune_structured(model.eval(), [(ids(s, 2, 16), None) for s in range(2)], n_kv_head=2, d_ff=40)


def gqa_llama() -> SLM:
    return SLM(SLMConfig(family="llama", vocab_size=V, block_size=32, n_layer=2, n_head=6, n_kv_head=2, d_model=48,
                         bias=True, tie_weights=False))


MODELS = {**{name: preset(name) for name in PRESETS}, "pruned-llama": pruned_llama, "pruned-gpt2": pruned_gpt2,
          "gqa-llama": gqa_llama}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    torch.manual_seed(0)
    return randomised(MODELS[request.param]())


def test_the_cases_are_what_they_claim(model):
    cfg = model.cfg
    attn = model.blocks[0].attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features) == (cfg.n_head * cfg.head_dim,
                                                                     cfg.n_kv_head * cfg.head_dim)
    if cfg.n_head * cfg.head_dim != cfg.d_model:        # the pruned model: narrower than d_model // n_head says
        assert cfg.head_dim * cfg.n_head < cfg.d_model and cfg.head_dim == 8 and cfg.d_ff == 40


def test_parameter_count_equals_the_tensors(model):
    cfg = model.cfg
    count = sizing.count_parameters(cfg)
    parts = {"attention": 0, "mlp": 0, "norm": 0, "embedding": 0, "position": 0, "head": 0}
    for name, p in model.named_parameters():            # a tied head is yielded once, as tok_emb
        part = ("attention" if ".attn." in name else "mlp" if ".mlp." in name else "norm" if "norm" in name
                else {"tok_emb.weight": "embedding", "pos_emb.weight": "position", "lm_head.weight": "head"}[name])
        parts[part] += p.numel()
    assert {k: getattr(count, k) for k in parts} == parts
    assert count.total == model.num_parameters() == sum(p.numel() for p in model.parameters())
    assert sizing.count_parameters(cfg.to_dict()).total == count.total                 # a plain dict
    assert sizing.card_from_config("m", cfg).params == count.total                      # a ModelCard
    assert sizing.card_from_config("m", cfg).head_dim == model.blocks[0].attn.head_dim


@pytest.mark.parametrize("dtype, name", [(torch.float32, "fp32"), (torch.bfloat16, "bf16")])
def test_kv_cache_bytes_equal_the_cache_the_model_keeps(model, dtype, name):
    B, T = 3, min(20, model.cfg.block_size - 1)
    m = SLM(model.cfg).to(dtype).eval()                 # a same-shape copy: the fixture stays fp32
    m.load_state_dict(model.state_dict())

    def kept(cache):
        return sum(t.numel() * t.element_size() for layer in cache for t in layer)

    with torch.no_grad():
        cache = m(ids(1, B, T), use_cache=True).kv_cache                     # prefill T tokens
        assert kept(cache) == sizing.kv_cache_bytes(m.cfg, context=T, batch=B, dtype=name)
        cache = m(ids(2, B, 1), kv_cache=cache).kv_cache                      # one decode step, as generate() does
        assert kept(cache) == sizing.kv_cache_bytes(m.cfg, context=T + 1, batch=B, dtype=name)


def test_forward_flops_equal_torchs_count(model):
    T = min(20, model.cfg.block_size - 1)
    with torch.no_grad():
        cache = model(ids(3, 1, T), use_cache=True).kv_cache
        for block in model.blocks:                      # every attention product written out, so torch counts it
            block.attn.impl = "explicit"
        try:
            with FlopCounterMode(display=False) as counter:
                model(ids(4, 1, 1), kv_cache=cache)
        finally:
            for block in model.blocks:
                block.attn.impl = model.cfg.attn_impl
    assert counter.get_total_flops() == sizing.forward_flops_per_token(model.cfg, context=T + 1)


def test_transformers_round_trip_keeps_the_logits(model):
    cfg = model.cfg
    if cfg.family == "gpt2" and cfg.n_head * cfg.head_dim != cfg.d_model:
        with pytest.raises(SLMLabError, match="GPT-2 has no head_dim"):
            to_hf(model)
        return
    x = ids(5, 2, min(24, model.cfg.block_size))
    with torch.no_grad():
        ref = model(x).logits
        hf = to_hf(model)
        back = from_hf(hf)
        torch.testing.assert_close(hf(x).logits, ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(back(x).logits, ref, rtol=0, atol=1e-5)
    shape = ("family", "n_layer", "n_head", "n_kv_head", "d_model", "head_dim", "d_ff", "tie_weights")
    assert {k: getattr(back.cfg, k) for k in shape} == {k: getattr(model.cfg, k) for k in shape}
