"""Convert the course's SLM to and from Hugging Face `transformers` models, weight for weight.

Llama family ↔ `LlamaForCausalLM` (same layout: q/k/v/o, gate/up/down, RMSNorm, half-split RoPE).
GPT-2 family ↔ `GPT2LMHeadModel`. GPT-2 fuses q, k, v into one `c_attn` and stores its linear layers
as `Conv1D`, i.e. weights transposed to (in, out); HF GPT-2 always has biases, so a bias-free SLM is
exported with zero biases. Conversions are exact: logits agree to float rounding (tests check 1e-5).
A pruned model (fewer heads, so n_head · head_dim < d_model) converts in the Llama family, whose
config carries `head_dim`; GPT-2's config cannot say it, so a pruned GPT-2 model is refused.
"""
from __future__ import annotations

import torch

from .errors import SLMLabError
from .model import SLM, SLMConfig


def hf_config(cfg: SLMConfig):
    """The transformers config describing the same architecture as `cfg`."""
    from transformers import GPT2Config, LlamaConfig

    if cfg.family == "gpt2":
        if cfg.head_dim * cfg.n_head != cfg.d_model:
            raise SLMLabError(f"transformers' GPT-2 has no head_dim setting (it is always n_embd / n_head), so this "
                              f"model's {cfg.n_head} heads of {cfg.head_dim} dimensions with d_model={cfg.d_model} "
                              "(pruned heads?) cannot be exported; keep all heads, or prune a llama-family model.")
        return GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.d_model,
                          n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.d_ff, activation_function="gelu_new",
                          resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
                          layer_norm_epsilon=cfg.norm_eps, tie_word_embeddings=cfg.tie_weights,
                          bos_token_id=None, eos_token_id=None)
    # rope_theta: transformers 5 still takes it (it folds it into rope_parameters) but its typed signature no longer
    # lists it, and 4.x (which pyproject admits) knows no rope_parameters.
    return LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,  # type: ignore[call-arg]
                       num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                       num_key_value_heads=cfg.n_kv_head, max_position_embeddings=cfg.block_size,
                       rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, attention_bias=cfg.bias,
                       mlp_bias=cfg.bias, tie_word_embeddings=cfg.tie_weights, attention_dropout=cfg.dropout,
                       head_dim=cfg.head_dim, bos_token_id=None, eos_token_id=None)


def slm_config(hf_cfg) -> SLMConfig:
    """The SLMConfig describing a transformers GPT-2 or Llama config."""
    kind = getattr(hf_cfg, "model_type", None)
    if kind == "gpt2":
        if hf_cfg.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise SLMLabError(f"GPT-2 activation {hf_cfg.activation_function!r} is not supported; the course uses gelu_new.")
        return SLMConfig(family="gpt2", vocab_size=hf_cfg.vocab_size, block_size=hf_cfg.n_positions,
                         n_layer=hf_cfg.n_layer, n_head=hf_cfg.n_head, d_model=hf_cfg.n_embd,
                         d_ff=hf_cfg.n_inner or 4 * hf_cfg.n_embd,      # transformers' rule for n_inner=None
                         bias=True, norm_eps=hf_cfg.layer_norm_epsilon,
                         tie_weights=bool(hf_cfg.tie_word_embeddings))
    if kind == "llama":
        # transformers ≥ 5 keeps RoPE settings in rope_parameters; 4.x in rope_theta / rope_scaling.
        rope = getattr(hf_cfg, "rope_parameters", None) or getattr(hf_cfg, "rope_scaling", None) or {}
        theta = rope.get("rope_theta", getattr(hf_cfg, "rope_theta", 10000.0))
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise SLMLabError("this Llama config uses RoPE scaling, which the course model does not implement.")
        # head_dim × heads may be less than hidden_size (pruned heads); None: SLMConfig derives D / H.
        head_dim = getattr(hf_cfg, "head_dim", None)
        if hf_cfg.attention_bias != getattr(hf_cfg, "mlp_bias", False):
            raise SLMLabError("attention_bias and mlp_bias differ in this Llama config; the course model has one bias flag.")
        return SLMConfig(family="llama", vocab_size=hf_cfg.vocab_size, block_size=hf_cfg.max_position_embeddings,
                         n_layer=hf_cfg.num_hidden_layers, n_head=hf_cfg.num_attention_heads,
                         n_kv_head=hf_cfg.num_key_value_heads or hf_cfg.num_attention_heads,
                         d_model=hf_cfg.hidden_size, head_dim=head_dim, d_ff=hf_cfg.intermediate_size,
                         bias=bool(hf_cfg.attention_bias), norm_eps=hf_cfg.rms_norm_eps, rope_theta=float(theta),
                         tie_weights=bool(hf_cfg.tie_word_embeddings))
    raise SLMLabError(f"model type {kind!r} cannot be converted; the course converts 'gpt2' and 'llama'.")


def _gpt2_pairs(cfg: SLMConfig):
    """(ours, theirs, transposed) for every GPT-2 weight except the fused attention input."""
    yield "tok_emb.weight", "transformer.wte.weight", False
    yield "pos_emb.weight", "transformer.wpe.weight", False
    for i in range(cfg.n_layer):
        o, h = f"blocks.{i}.", f"transformer.h.{i}."
        yield o + "norm1.weight", h + "ln_1.weight", False
        yield o + "norm2.weight", h + "ln_2.weight", False
        yield o + "attn.o_proj.weight", h + "attn.c_proj.weight", True
        yield o + "mlp.fc.weight", h + "mlp.c_fc.weight", True
        yield o + "mlp.proj.weight", h + "mlp.c_proj.weight", True
        for ob, hb in (("norm1", "ln_1"), ("norm2", "ln_2"), ("attn.o_proj", "attn.c_proj"),
                       ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
            yield o + ob + ".bias", h + hb + ".bias", False
    yield "norm_f.weight", "transformer.ln_f.weight", False
    yield "norm_f.bias", "transformer.ln_f.bias", False


def _llama_pairs(cfg: SLMConfig):
    yield "tok_emb.weight", "model.embed_tokens.weight"
    for i in range(cfg.n_layer):
        o, h = f"blocks.{i}.", f"model.layers.{i}."
        names = [("norm1", "input_layernorm"), ("norm2", "post_attention_layernorm")]
        linears = [("attn.q_proj", "self_attn.q_proj"), ("attn.k_proj", "self_attn.k_proj"),
                   ("attn.v_proj", "self_attn.v_proj"), ("attn.o_proj", "self_attn.o_proj"),
                   ("mlp.gate", "mlp.gate_proj"), ("mlp.up", "mlp.up_proj"), ("mlp.down", "mlp.down_proj")]
        for a, b in names + linears:
            yield o + a + ".weight", h + b + ".weight"
        if cfg.bias:
            for a, b in linears:
                yield o + a + ".bias", h + b + ".bias"
    yield "norm_f.weight", "model.norm.weight"


@torch.no_grad()
def to_hf(model: SLM):
    """A transformers model (eval mode, eager attention) with exactly this SLM's weights."""
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    cfg, ours = model.cfg, model.state_dict()
    hcfg = hf_config(cfg)
    hcfg._attn_implementation = "eager"
    hf = (GPT2LMHeadModel if cfg.family == "gpt2" else LlamaForCausalLM)(hcfg)
    theirs = hf.state_dict()
    if cfg.family == "gpt2":
        for i in range(cfg.n_layer):
            q, k, v = (ours[f"blocks.{i}.attn.{n}_proj.weight"] for n in "qkv")
            theirs[f"transformer.h.{i}.attn.c_attn.weight"].copy_(torch.cat([q, k, v], 0).t())
            bias = theirs[f"transformer.h.{i}.attn.c_attn.bias"]
            bias.copy_(torch.cat([ours[f"blocks.{i}.attn.{n}_proj.bias"] for n in "qkv"]) if cfg.bias else 0)
        for a, b, transpose in _gpt2_pairs(cfg):
            if a in ours:
                theirs[b].copy_(ours[a].t() if transpose else ours[a])
            else:                                        # a bias-free SLM: HF's bias stays zero
                theirs[b].zero_()
    else:
        for a, b in _llama_pairs(cfg):
            theirs[b].copy_(ours[a])
    if not cfg.tie_weights:
        theirs["lm_head.weight"].copy_(ours["lm_head.weight"])
    hf.load_state_dict(theirs)
    if cfg.tie_weights:
        hf.tie_weights()
    return hf.eval()


@torch.no_grad()
def from_hf(hf_model) -> SLM:
    """An SLM with exactly the weights of a transformers GPT2LMHeadModel or LlamaForCausalLM."""
    cfg = slm_config(hf_model.config)
    model = SLM(cfg)
    ours, theirs = model.state_dict(), {k: v.float() for k, v in hf_model.state_dict().items()}
    if cfg.family == "gpt2":
        for i in range(cfg.n_layer):
            qkv_w = theirs[f"transformer.h.{i}.attn.c_attn.weight"].t()             # (3D, D)
            qkv_b = theirs[f"transformer.h.{i}.attn.c_attn.bias"]
            for n, w, b in zip("qkv", qkv_w.chunk(3, 0), qkv_b.chunk(3, 0), strict=True):
                ours[f"blocks.{i}.attn.{n}_proj.weight"].copy_(w)
                ours[f"blocks.{i}.attn.{n}_proj.bias"].copy_(b)
        for a, b, transpose in _gpt2_pairs(cfg):
            ours[a].copy_(theirs[b].t() if transpose else theirs[b])
    else:
        for a, b in _llama_pairs(cfg):
            ours[a].copy_(theirs[b])
    if not cfg.tie_weights:
        ours["lm_head.weight"].copy_(theirs["lm_head.weight"])
    model.load_state_dict(ours)
    return model.eval()
