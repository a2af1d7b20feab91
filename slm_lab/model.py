"""The small language model: one config, two families, a KV cache and `generate()`.

- GPT-2 family: LayerNorm, GELU MLP, learned position embeddings, biases.
- Llama family: RMSNorm, rotary position embeddings (RoPE), SwiGLU MLP, grouped-query attention.

Shapes: B batch, T new tokens, S = past + T keys, D d_model, H query heads, K kv heads, hd head dim,
V vocabulary. Parameter names mirror the paper diagrams (q_proj, o_proj, ...) so that `slm_lab.hf`
maps them one-to-one onto `transformers`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import SLMLabError

FAMILIES = ("gpt2", "llama")
KVCache = list  # one (k, v) pair per layer, each (B, K, S, hd)


def default_d_ff(family: str, d_model: int) -> int:
    """MLP width when a config names none: 4·D for GPT-2's two matrices; for SwiGLU's three, 8/3·D
    (the same parameters as 4·D with two) rounded up to a multiple of 32."""
    return 4 * d_model if family == "gpt2" else 32 * math.ceil(8 * d_model / 3 / 32)


# The default of the fields that __post_init__ derives from the others. It is None, typed Any so that those
# fields can be typed as what a config holds once built (an int, a bool), not as what a caller may pass.
_DERIVED: Any = None


@dataclass
class SLMConfig:
    family: str = "llama"
    vocab_size: int = 128
    block_size: int = 256          # longest context the model accepts
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = _DERIVED      # default n_head; < n_head: grouped-query attention (Llama family)
    d_model: int = 128
    head_dim: int = _DERIVED       # default d_model // n_head; smaller when heads were pruned (slm_lab.prune)
    d_ff: int = _DERIVED           # MLP width; default: default_d_ff(family, d_model)
    dropout: float = 0.0
    bias: bool = _DERIVED          # default True for GPT-2, False for Llama
    tie_weights: bool = True       # share the token embedding with the output head
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    attn_impl: str = "sdpa"        # "sdpa" (fused) or "explicit" (every step written out, for teaching)

    if TYPE_CHECKING:   # the constructor as type checkers and editors show it: None asks for the default
        def __init__(self, family: str = ..., vocab_size: int = ..., block_size: int = ..., n_layer: int = ...,
                     n_head: int = ..., n_kv_head: int | None = ..., d_model: int = ..., head_dim: int | None = ...,
                     d_ff: int | None = ..., dropout: float = ..., bias: bool | None = ..., tie_weights: bool = ...,
                     rope_theta: float = ..., norm_eps: float = ..., attn_impl: str = ...) -> None: ...

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise SLMLabError(f"family={self.family!r} is unknown; use 'gpt2' or 'llama'.")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None and self.d_model % self.n_head:
            raise SLMLabError(
                f"d_model={self.d_model} is not divisible by n_head={self.n_head}; "
                "choose them so each head gets d_model // n_head dimensions.")
        if self.n_head % self.n_kv_head:
            raise SLMLabError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}; "
                              "each key/value head must serve the same number of query heads.")
        if self.family == "gpt2" and self.n_kv_head != self.n_head:
            raise SLMLabError("grouped-query attention (n_kv_head < n_head) belongs to the Llama family; "
                              "use family='llama'.")
        if self.head_dim is None:
            self.head_dim = self.d_model // self.n_head
        if self.family == "llama" and self.head_dim % 2:
            raise SLMLabError(f"RoPE needs an even head dimension, got {self.head_dim}; change d_model or n_head.")
        if self.attn_impl not in ("sdpa", "explicit"):
            raise SLMLabError(f"attn_impl={self.attn_impl!r} is unknown; use 'sdpa' or 'explicit'.")
        if self.d_ff is None:
            self.d_ff = default_d_ff(self.family, self.d_model)
        if self.bias is None:
            self.bias = self.family == "gpt2"
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model", "head_dim", "d_ff"):
            if getattr(self, name) <= 0:
                raise SLMLabError(f"{name}={getattr(self, name)} must be a positive integer.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SLMConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SLMLabError(f"config has unknown fields {sorted(unknown)}; is it from a newer slm_lab?")
        return cls(**d)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · weight — LayerNorm without the mean and the bias."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(head_dim: int, length: int, theta: float = 10000.0):
    """cos, sin tables of shape (length, head_dim) for rotary embeddings (half-split layout, as in HF Llama)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)   # (length, hd/2)
    angles = torch.cat([angles, angles], dim=-1)                                   # (length, hd)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x_i, x_{i+hd/2}) pair by its position's angle. x: (B, H, T, hd); cos, sin: (T, hd)."""
    return x * cos + rotate_half(x) * sin


class CausalSelfAttention(nn.Module):
    """Multi-head (or grouped-query) causal self-attention with an optional KV cache."""

    def __init__(self, cfg: SLMConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=cfg.bias)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=cfg.bias)
        self.use_rope = cfg.family == "llama"
        self.impl = cfg.attn_impl
        self.dropout = cfg.dropout
        self.keep_attention = False   # set True to store the last attention map (explicit path) for plots
        self.last_attention: torch.Tensor | None = None

    def forward(self, x, cos=None, sin=None, past=None):
        """x: (B, T, D); past: (k, v) each (B, K, S-T, hd) or None. Returns y (B, T, D) and present (k, v)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)       # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)    # (B, K, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.use_rope:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)       # (B, K, S, hd)
        present = (k, v)
        if self.n_kv_head != self.n_head:   # each kv head serves n_head // n_kv_head query heads
            rep = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = self._attend(q, k, v)                                                        # (B, H, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1)), present

    def _attend(self, q, k, v):
        T, S = q.shape[2], k.shape[2]
        # Query t sits at absolute position S - T + t and may see keys 0 … S - T + t.
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
        p = self.dropout if self.training else 0.0
        if self.impl == "explicit" or self.keep_attention:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)                # (B, H, T, S)
            scores = scores.masked_fill(~mask, float("-inf"))
            att = torch.softmax(scores.float(), dim=-1).type_as(q)
            if self.keep_attention:
                self.last_attention = att.detach()
            return F.dropout(att, p, self.training) @ v
        if T == S:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)


class MLP(nn.Module):
    """GPT-2: fc → GELU (tanh approximation, as GPT-2 used) → proj."""

    def __init__(self, cfg: SLMConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class SwiGLU(nn.Module):
    """Llama: down(silu(gate(x)) · up(x)) — a gated MLP with three matrices."""

    def __init__(self, cfg: SLMConfig):
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


def make_norm(cfg: SLMConfig) -> nn.Module:
    if cfg.family == "llama":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: SLMConfig):
        super().__init__()
        self.norm1, self.norm2 = make_norm(cfg), make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = SwiGLU(cfg) if cfg.family == "llama" else MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos=None, sin=None, past=None):
        a, present = self.attn(self.norm1(x), cos, sin, past)
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.norm2(x))), present


class SLMOutput(NamedTuple):
    logits: torch.Tensor                  # (B, T, V)
    loss: torch.Tensor | None             # mean cross-entropy when targets were given
    kv_cache: KVCache | None              # per layer (k, v), each (B, K, S, hd), when use_cache


class SLM(nn.Module):
    """A decoder-only transformer language model."""

    rope_cos: torch.Tensor   # (block_size, hd) buffers, Llama family only (registered in __init__)
    rope_sin: torch.Tensor

    def __init__(self, cfg: SLMConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model) if cfg.family == "gpt2" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.tok_emb.weight
        if cfg.family == "llama":
            cos, sin = rope_tables(cfg.head_dim, cfg.block_size, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():   # GPT-2: shrink residual projections by 1/sqrt(2·layers)
            if name.endswith(("o_proj.weight", "mlp.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, use_cache: bool = False) -> SLMOutput:
        """idx: (B, T) int64 token ids; targets: (B, T) or None; kv_cache from a previous call."""
        B, T = idx.shape
        past = kv_cache[0][0].shape[2] if kv_cache else 0
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()):
            self._check_input(idx, past)
        x = self.tok_emb(idx)
        cos = sin = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(past, past + T, device=idx.device))
        else:
            cos, sin = self.rope_cos[past:past + T], self.rope_sin[past:past + T]
        x = self.drop(x)
        presents = []
        for i, block in enumerate(self.blocks):
            x, present = block(x, cos, sin, kv_cache[i] if kv_cache else None)
            presents.append(present)
        logits = self.lm_head(self.norm_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
        return SLMOutput(logits, loss, presents if (use_cache or kv_cache) else None)

    def _check_input(self, idx: torch.Tensor, past: int):
        if idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise SLMLabError(f"the model expects token ids of shape (batch, time) and an integer dtype, "
                              f"got shape {tuple(idx.shape)} and {idx.dtype}.")
        if past + idx.shape[1] > self.cfg.block_size:
            raise SLMLabError(f"sequence of {past + idx.shape[1]} tokens is longer than block_size="
                              f"{self.cfg.block_size}; crop the input to the last {self.cfg.block_size} tokens.")
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.cfg.vocab_size):
            raise SLMLabError(f"token id {int(idx.max())} is outside the vocabulary of {self.cfg.vocab_size}; "
                              "encode with the tokenizer this model was trained with.")

    def num_parameters(self, embeddings: bool = True) -> int:
        """Distinct parameters (a tied head counts once); without embeddings drops the token and position tables."""
        n = sum(p.numel() for p in self.parameters())
        if not embeddings:
            n -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
        return n

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 use_cache: bool = True) -> torch.Tensor:
        """Extend idx (B, T) by max_new_tokens sampled tokens → (B, T + max_new_tokens). temperature 0 is greedy."""
        if max_new_tokens < 0:
            raise SLMLabError(f"max_new_tokens={max_new_tokens} must be ≥ 0.")
        was_training = self.training
        self.eval()
        home, dev = idx.device, self.tok_emb.weight.device
        idx = idx.to(dev)                                           # prompts may come from the CPU
        gen = None
        if seed is not None:
            gen = torch.Generator(device=dev).manual_seed(seed)
        cache, n_cached = None, 0
        for _ in range(max_new_tokens):
            if use_cache and cache is not None and idx.shape[1] <= self.cfg.block_size:
                out = self(idx[:, n_cached:], kv_cache=cache)       # only the newest token
            else:                                                   # (re)start: the last block_size tokens
                out = self(idx[:, -self.cfg.block_size:], use_cache=use_cache)
            cache, n_cached = out.kv_cache, idx.shape[1]
            nxt = sample_next(out.logits[:, -1, :], temperature, top_k, top_p, gen)
            idx = torch.cat([idx, nxt], dim=1)
            if idx.shape[1] > self.cfg.block_size:
                cache = None     # past the longest context: recompute over a sliding window
        self.train(was_training)
        return idx.to(home)


def top_k_logits(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (..., V) and set the others to -inf (a new tensor);
    k ≥ V keeps every token."""
    kth = torch.topk(logits, min(k, logits.size(-1)), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token from logits (B, V) → (B, 1). temperature 0 → argmax."""
    if temperature < 0:
        raise SLMLabError(f"temperature={temperature} must be ≥ 0 (0 means greedy).")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise SLMLabError(f"top_p={top_p} must be in (0, 1].")
    if top_k is not None and top_k < 1:
        raise SLMLabError(f"top_k={top_k} must be at least 1 (or None to keep every token).")
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_logits(logits, top_k)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p       # tokens after the nucleus is already full
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)
