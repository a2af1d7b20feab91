"""Sizing language models: exact parameter counts, training compute, memory, cost — from configs.

Every number here is computed from a model's configuration (hidden size, layers, heads, ...) and a
few stated hardware assumptions kept in one place (`HARDWARE`, `TRAINING`). The registry holds the
published configurations of real models; `tests/test_sizing.py` builds each one with `transformers`
on the meta device (no weights, no download) and checks the count to the parameter.

Units: parameters and tokens are plain counts, FLOPs are floating-point operations, memory is bytes
(GB = 10^9 bytes), time is seconds, money is US dollars. D model width, L layers, H query heads,
K key/value heads, hd head dimension, F MLP width, V vocabulary, P context length.

The course's own families (gpt2, llama) are counted from an `SLMConfig`: it is the one home of the
derived sizes (kv heads, hd, F), so a pruned model (fewer heads, hd < D / H) is counted exactly too.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import SLMLabError
from .model import FAMILIES as SLM_FAMILIES
from .model import SLMConfig

SLM_MAX_PARAMS = 10e9   # where we draw the SLM/LLM line: a convention (Phi-3-medium, 14B, sits just above)
BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}
FAMILIES = ("gpt2", "opt", "llama", "phi3small")


@dataclass(frozen=True)
class ModelCard:
    """A model as published: its headline size and, where public, its architecture.

    family: gpt2 (LayerNorm, GELU MLP, learned positions), opt (GPT-2 layout, ReLU, positions offset
    by 2), llama (RMSNorm, SwiGLU, grouped-query attention; Phi-3 mini/medium too), phi3small (GQA +
    gated GELU MLP + LayerNorm, biases everywhere), or None when the architecture is not public.
    A gpt2 / llama card takes the sizes it leaves at 0 (n_kv_head, head_dim, d_ff) from `slm_config()`,
    as the course model would build it; an opt / phi3small card states them.
    """
    name: str
    params: float                   # headline count as published (for architectures not public: the only number)
    family: str | None = None
    d_model: int = 0
    n_layer: int = 0
    n_head: int = 0
    n_kv_head: int = 0              # 0 → n_head (no grouped-query attention)
    d_ff: int = 0                   # MLP width; 0 → SLMConfig's default (gpt2 / llama)
    vocab_size: int = 0
    block_size: int = 0             # context length
    tie_weights: bool = False
    bias: bool = False
    train_tokens: float | None = None
    hf_class: str | None = None     # the transformers class that builds it, if any
    source: str = ""
    head_dim: int = 0               # 0 → SLMConfig's d_model // n_head (gpt2 / llama); smaller after head pruning

    def __post_init__(self):
        if self.family is not None and self.family not in FAMILIES:
            raise SLMLabError(f"{self.name}: family {self.family!r} is unknown; use one of {', '.join(FAMILIES)}.")
        if self.family in SLM_FAMILIES:
            cfg = self.slm_config()
            for name in ("n_kv_head", "head_dim", "d_ff"):
                object.__setattr__(self, name, getattr(cfg, name))
        elif self.public and not (self.head_dim and self.d_ff):
            raise SLMLabError(f"{self.name} ({self.family}) needs head_dim and d_ff stated; only gpt2 and llama "
                              "cards take the course model's defaults.")

    @property
    def public(self) -> bool:
        return self.family is not None

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def is_slm(self) -> bool:
        return (count_parameters(self).total if self.public else self.params) < SLM_MAX_PARAMS

    def slm_config(self, **overrides) -> SLMConfig:
        """The course's SLMConfig of the same shape (gpt2 / llama families), e.g. to time it with random weights.
        Overrides replace single fields; the card's head_dim and d_ff stay unless overridden too."""
        if self.family not in SLM_FAMILIES:
            raise SLMLabError(f"{self.name} ({self.family or 'architecture not public'}) cannot be built as the "
                              "course's SLM; pick a gpt2- or llama-family model.")
        kw = dict(family=self.family, vocab_size=self.vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                  n_head=self.n_head, n_kv_head=self.n_kv_head or None, d_model=self.d_model,
                  head_dim=self.head_dim or None, d_ff=self.d_ff or None, bias=self.bias, tie_weights=self.tie_weights)
        return SLMConfig(**{**kw, **overrides})


def _gpt2(name, params, d, L, H, V=50257, P=1024, tokens=None, source=""):   # d_ff 0: n_inner unset, 4·D
    return ModelCard(name, params, "gpt2", d, L, H, H, 0, V, P, tie_weights=True, bias=True,
                     train_tokens=tokens, hf_class="GPT2LMHeadModel", source=source)


def _llama(name, params, d, L, H, K, F, V, P, tied, tokens, source, hf_class="LlamaForCausalLM"):
    return ModelCard(name, params, "llama", d, L, H, K, F, V, P, tie_weights=tied, bias=False,
                     train_tokens=tokens, hf_class=hf_class, source=source)


_GPT2_SRC = "openai-community/gpt2* config.json; the GPT-2 paper's Table 2 lists 117M/345M/762M/1542M (miscounted)"
_L3_SRC = "meta-llama/Meta-Llama-3-{} config.json; 15T+ tokens (Meta Llama 3 announcement, Apr 2024)"
_SMOL_SRC = "HuggingFaceTB/SmolLM2-{} config.json; tokens from its model card / the SmolLM2 paper (2025)"
_PHI3_SRC = "microsoft/Phi-3-{} config.json; tokens from the Phi-3 technical report (Abdin et al., 2024)"

REGISTRY: dict[str, ModelCard] = {c.name: c for c in [
    _gpt2("GPT-2 124M", 124e6, 768, 12, 12, source=_GPT2_SRC),
    _gpt2("GPT-2 355M", 355e6, 1024, 24, 16, source=_GPT2_SRC),
    _gpt2("GPT-2 774M", 774e6, 1280, 36, 20, source=_GPT2_SRC),
    _gpt2("GPT-2 1.5B", 1.5e9, 1600, 48, 25, source=_GPT2_SRC),
    # GPT-3 paper (Brown et al., 2020) Table 2.1: 96 layers, d_model 12288, 96 heads of 128, context 2048,
    # GPT-2's tokenizer; 300B training tokens. Counted as a GPT-2-style dense model (its alternating
    # sparse attention has no parameters of its own).
    _gpt2("GPT-3 175B", 175e9, 12288, 96, 96, P=2048, tokens=300e9,
          source="GPT-3 paper (Brown et al., 2020) Table 2.1 and section 2.2"),
    # OPT paper (Zhang et al., 2022) Table 1 + facebook/opt-* configs: vocab 50272, FFN 4·D, ReLU, tied,
    # learned positions with 2 extra rows; 180B training tokens on 992 A100 80GB GPUs.
    ModelCard("OPT-175B", 175e9, "opt", 12288, 96, 96, 96, 49152, 50272, 2048, tie_weights=True, bias=True,
              train_tokens=180e9, hf_class="OPTForCausalLM", source="OPT paper (Zhang et al., 2022) Table 1, section 2",
              head_dim=128),
    _llama("Llama-3-8B", 8e9, 4096, 32, 32, 8, 14336, 128256, 8192, False, 15e12, _L3_SRC.format("8B")),
    _llama("Llama-3-70B", 70e9, 8192, 80, 64, 8, 28672, 128256, 8192, False, 15e12, _L3_SRC.format("70B")),
    _llama("Llama-3.2-1B", 1.23e9, 2048, 16, 32, 8, 8192, 128256, 131072, True, 9e12,
           "meta-llama/Llama-3.2-1B config.json (RoPE scaling adds no parameters); up to 9T tokens (model card)"),
    _llama("TinyLlama-1.1B", 1.1e9, 2048, 22, 32, 4, 5632, 32000, 2048, False, 3e12,
           "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T config.json; 3T tokens (Zhang et al., 2024)"),
    _llama("Phi-3-mini", 3.8e9, 3072, 32, 32, 32, 8192, 32064, 4096, False, 3.3e12, _PHI3_SRC.format("mini-4k-instruct"),
           hf_class="Phi3ForCausalLM"),
    # Phi-3-small is a custom architecture (trust_remote_code, not in transformers): GQA with a fused,
    # biased query_key_value, a GEGLU MLP (up_proj of 2·F, biased), LayerNorm with bias, tied embeddings.
    # Counted by formula only; its published total is 7.39B.
    ModelCard("Phi-3-small", 7e9, "phi3small", 4096, 32, 32, 8, 14336, 100352, 8192, tie_weights=True, bias=True,
              train_tokens=4.8e12, source=_PHI3_SRC.format("small-8k-instruct") + "; modeling_phi3_small.py",
              head_dim=128),
    _llama("Phi-3-medium", 14e9, 5120, 40, 40, 10, 17920, 32064, 4096, False, 4.8e12,
           _PHI3_SRC.format("medium-4k-instruct"), hf_class="Phi3ForCausalLM"),
    _llama("SmolLM2-135M", 135e6, 576, 30, 9, 3, 1536, 49152, 8192, True, 2e12, _SMOL_SRC.format("135M")),
    _llama("SmolLM2-360M", 360e6, 960, 32, 15, 5, 2560, 49152, 8192, True, 4e12, _SMOL_SRC.format("360M")),
    _llama("SmolLM2-1.7B", 1.7e9, 2048, 24, 32, 32, 8192, 49152, 8192, True, 11e12, _SMOL_SRC.format("1.7B")),
    # Architecture not public: only the published parameter count is known — we do not invent one.
    ModelCard("Gemini Nano-1", 1.8e9, source="Gemini 1.0 technical report (Gemini Team, 2023): 1.8B, 4-bit on device"),
    ModelCard("Gemini Nano-2", 3.25e9, source="Gemini 1.0 technical report (Gemini Team, 2023): 3.25B, 4-bit on device"),
    ModelCard("GPT-4 (rumoured)", 1.76e12, source="not published by OpenAI; ~1.76T is a widely repeated 2023 rumour"),
]}


def card(name: str) -> ModelCard:
    """The registry entry called `name`."""
    if name not in REGISTRY:
        raise SLMLabError(f"no model called {name!r} in the registry; choose one of: {', '.join(REGISTRY)}.")
    return REGISTRY[name]


def _card_of(cfg: SLMConfig, name: str, source: str = "slm_lab", params: float = 0.0) -> ModelCard:
    return ModelCard(name, params, cfg.family, cfg.d_model, cfg.n_layer, cfg.n_head, cfg.n_kv_head, cfg.d_ff,
                     cfg.vocab_size, cfg.block_size, cfg.tie_weights, cfg.bias, source=source, head_dim=cfg.head_dim)


def card_from_config(name: str, cfg: SLMConfig, source: str = "slm_lab") -> ModelCard:
    """A ModelCard for one of the course's own models (its headline size is its exact count)."""
    return _card_of(cfg, name, source, float(count_parameters(cfg).total))


def course_cards(vocab_size: int) -> dict[str, ModelCard]:
    """The course presets (slm_lab.train.PRESETS) as ModelCards for a tokenizer with `vocab_size` tokens."""
    from .train import PRESETS  # train is a higher module; import on use only

    return {f"course {n}": card_from_config(f"course {n}", p.model_config(vocab_size), f"slm_lab.train.PRESETS[{n!r}]")
            for n, p in PRESETS.items()}


# ------------------------------------------------------------------ parameters ----
Arch = ModelCard | SLMConfig | Mapping


def architecture(a: Arch) -> ModelCard:
    """Every size of `a` resolved, as a ModelCard. Accepts a ModelCard with a public architecture, the
    course's SLMConfig, or a dict: SLMConfig's keys (gpt2 / llama; what SLMConfig leaves out it derives,
    as for a model) or, for opt / phi3small, ModelCard's keys with head_dim and d_ff stated."""
    if isinstance(a, ModelCard):
        if not a.public:
            raise SLMLabError(f"{a.name}'s architecture is not public, so only its published size "
                              f"({a.params / 1e9:g}B) is known; pick a model with a published config.")
        return a
    if isinstance(a, SLMConfig):
        return _card_of(a, "config")
    if not isinstance(a, Mapping):
        raise SLMLabError(f"expected a ModelCard, an SLMConfig or a config dict, got {type(a).__name__}.")
    if a.get("family") not in FAMILIES:
        raise SLMLabError(f"config family {a.get('family')!r} is unknown; use one of {', '.join(FAMILIES)}.")
    keys = ("d_model", "n_layer", "n_head", "vocab_size", "block_size")
    if any(not a.get(k) for k in keys):
        raise SLMLabError(f"the config needs positive {', '.join(keys)}; got {dict(a)}.")
    given = {k: v for k, v in a.items() if k != "name" and v is not None}
    slm = a["family"] in SLM_FAMILIES
    known = {f.name for f in fields(SLMConfig if slm else ModelCard)} - {"name", "params"}
    if set(given) - known:
        raise SLMLabError(f"the config has unknown fields {sorted(set(given) - known)}; use the field names of "
                          f"{'SLMConfig' if slm else 'ModelCard'} ({', '.join(sorted(known))}).")
    name = a.get("name", "config")
    if slm:
        return _card_of(SLMConfig(**given), name)
    return ModelCard(name, 0.0, **{"tie_weights": True, "bias": True, **given})   # both, as in OPT and Phi-3-small




@dataclass(frozen=True)
class ParameterCount:
    """Parameters by part of the model; `total` counts a tied head once."""
    embedding: int      # token table V·D
    position: int       # learned position table (GPT-2 / OPT); 0 with RoPE
    attention: int      # q, k, v, o (+ biases) in all layers
    mlp: int            # 2 matrices (GELU/ReLU) or 3 (SwiGLU/GEGLU) (+ biases) in all layers
    norm: int           # 2 per layer + the final one
    head: int           # output projection V·D; 0 when tied to the embedding

    @property
    def total(self) -> int:
        return self.embedding + self.position + self.attention + self.mlp + self.norm + self.head

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding - self.position


def _layer_parts(a: ModelCard) -> tuple[int, int, int, int]:
    """(attention weights, attention biases, MLP weights, MLP biases) of one block."""
    D, H, K, F, hd, b = a.d_model, a.n_head, a.kv_heads, a.d_ff, a.head_dim, int(a.bias)
    # q is D → H·hd, k and v are D → K·hd each (GQA: K < H heads shared), o is H·hd → D.
    attn_w, attn_b = D * (H + 2 * K) * hd + H * hd * D, b * ((H + 2 * K) * hd + D)
    gated = a.family in ("llama", "phi3small")     # SwiGLU / GEGLU: gate, up and down — three matrices
    mlp_w, mlp_b = (3 if gated else 2) * D * F, b * ((2 if gated else 1) * F + D)
    return attn_w, attn_b, mlp_w, mlp_b


def count_parameters(arch: Arch) -> ParameterCount:
    """Exact parameter count from a config — equal to the transformers model built from it."""
    a = architecture(arch)
    D, L, V = a.d_model, a.n_layer, a.vocab_size
    attn_w, attn_b, mlp_w, mlp_b = _layer_parts(a)
    norm_size = D if a.family == "llama" else D * (1 + int(a.bias))   # RMSNorm: weight; LayerNorm: weight (+ bias)
    learned: dict[str | None, int] = {"gpt2": a.block_size, "opt": a.block_size + 2}   # OPT offsets positions by 2
    positions = learned.get(a.family, 0)
    return ParameterCount(embedding=V * D, position=positions * D, attention=L * (attn_w + attn_b),
                          mlp=L * (mlp_w + mlp_b), norm=(2 * L + 1) * norm_size, head=0 if a.tie_weights else V * D)


def matmul_parameters(arch: Arch) -> int:
    """Weights used in a matrix multiply for every token: attention, MLP and the output head (tied or not)."""
    a = architecture(arch)
    attn_w, _, mlp_w, _ = _layer_parts(a)
    return a.n_layer * (attn_w + mlp_w) + a.vocab_size * a.d_model


def hf_model_on_meta(c: ModelCard):
    """Build the transformers model for `c` on the meta device: real shapes, no memory, no download."""
    import torch

    if c.hf_class is None:
        raise SLMLabError(f"transformers has no class for {c.name}; count it with count_parameters instead.")
    import transformers

    cls = getattr(transformers, c.hf_class)
    common: dict[str, Any] = dict(vocab_size=c.vocab_size, tie_word_embeddings=c.tie_weights)
    cfg: transformers.PretrainedConfig
    if c.family == "gpt2":
        cfg = transformers.GPT2Config(n_embd=c.d_model, n_layer=c.n_layer, n_head=c.n_head, n_inner=c.d_ff,
                                      n_positions=c.block_size, **common)
    elif c.family == "opt":
        cfg = transformers.OPTConfig(hidden_size=c.d_model, num_hidden_layers=c.n_layer, ffn_dim=c.d_ff,
                                     num_attention_heads=c.n_head, max_position_embeddings=c.block_size,
                                     word_embed_proj_dim=c.d_model, enable_bias=c.bias, **common)
    else:
        conf_cls = transformers.Phi3Config if c.hf_class == "Phi3ForCausalLM" else transformers.LlamaConfig
        extra: dict[str, Any] = dict(head_dim=c.head_dim) if conf_cls is transformers.LlamaConfig else {}
        cfg = conf_cls(hidden_size=c.d_model, num_hidden_layers=c.n_layer, num_attention_heads=c.n_head,
                       num_key_value_heads=c.kv_heads, intermediate_size=c.d_ff, max_position_embeddings=c.block_size,
                       pad_token_id=None, bos_token_id=None, eos_token_id=None, **extra, **common)
    with torch.device("meta"):
        return cls(cfg)


# ------------------------------------------------------------- compute & memory ----
def training_flops(n_params: float, n_tokens: float) -> float:
    """≈ 6·N·D: per token and parameter, 2 FLOPs forward (multiply + add) and 4 backward."""
    return 6.0 * n_params * n_tokens


# Hoffmann et al. (2022), "Training Compute-Optimal LLMs" (Chinchilla), Table 3 (approach 1):
# parameters → compute-optimal training tokens. The ratio is about 20 tokens per parameter throughout.
CHINCHILLA_TABLE = ((400e6, 8.0e9), (1e9, 20.2e9), (10e9, 205.1e9), (67e9, 1.5e12), (175e9, 3.7e12),
                    (280e9, 5.9e12), (520e9, 11.0e12), (1e12, 21.2e12), (10e12, 216.2e12))


def chinchilla_tokens(n_params: float) -> float:
    """Compute-optimal training tokens for N parameters, interpolating Table 3's tokens/parameter in log N."""
    logs = [math.log(n) for n, _ in CHINCHILLA_TABLE]
    ratios = [t / n for n, t in CHINCHILLA_TABLE]
    x = min(max(math.log(n_params), logs[0]), logs[-1])
    points = list(zip(logs, ratios, strict=True))
    for (x0, r0), (x1, r1) in zip(points, points[1:], strict=False):
        if x <= x1:
            return n_params * (r0 + (r1 - r0) * (x - x0) / (x1 - x0))
    return n_params * ratios[-1]


def forward_flops_per_token(arch: Arch, context: int) -> float:
    """FLOPs to process one token that attends to `context` tokens: 2 per matmul weight, plus attention
    (q·kᵀ and weights·v: 2·2·L·context·H·hd — with GQA the query heads still do all the work)."""
    a = architecture(arch)
    return 2.0 * matmul_parameters(a) + 4.0 * a.n_layer * context * a.n_head * a.head_dim


def weight_bytes(n_params: float, dtype: str = "bf16") -> float:
    """Memory for the weights alone (quantization scales, a few % more for int4/int8, are left out)."""
    return n_params * _bytes(dtype)


def kv_cache_bytes(arch: Arch, context: int, batch: int = 1, dtype: str = "bf16") -> float:
    """K and V for every layer, kv head and position: 2·L·K·hd·context·batch·bytes."""
    a = architecture(arch)
    return 2.0 * a.n_layer * a.kv_heads * a.head_dim * context * batch * _bytes(dtype)


def _bytes(dtype: str) -> float:
    if dtype not in BYTES_PER_PARAM:
        raise SLMLabError(f"dtype {dtype!r} is unknown; use one of {', '.join(BYTES_PER_PARAM)}.")
    return BYTES_PER_PARAM[dtype]


def total_params(c: ModelCard | Arch) -> float:
    """Exact count when the architecture is public, else the published headline."""
    return c.params if isinstance(c, ModelCard) and not c.public else float(count_parameters(c).total)


# ------------------------------------------------------------ hardware & money ----
@dataclass(frozen=True)
class Hardware:
    """A device as the roofline sees it: how much fits, how fast bytes move, how fast it multiplies."""
    name: str
    memory: float                         # bytes
    bandwidth: float                      # bytes/s from memory to the compute units
    flops: float                          # peak FLOP/s (dense bf16/fp16 for accelerators)
    usable: float = 0.9                   # share of memory one model may take (OS, runtime, fragmentation)
    price_per_hour: float | None = None   # rental $/h; None for a device you own
    price: float | None = None            # purchase $
    source: str = ""


# Stated assumptions, all in one place. Datasheet peaks are dense (no 2:4 sparsity).
HARDWARE: dict[str, Hardware] = {h.name: h for h in [
    Hardware("phone 8 GB", 8e9, 60e9, 2e12, usable=0.5,
             source="assumed 2024 flagship: LPDDR5X ≈ 60 GB/s, ≈ 2 TFLOP/s fp16 on GPU/NPU; the OS keeps ~half the RAM"),
    Hardware("laptop 16 GB", 16e9, 100e9, 3.6e12, usable=0.75,
             source="Apple M2 laptop (Apple spec): 100 GB/s unified memory, 3.6 TFLOP/s fp32 GPU"),
    Hardware("A100 80 GB", 80e9, 2.039e12, 312e12, 0.9, price_per_hour=2.0, price=10_000,
             source="NVIDIA A100 SXM 80GB datasheet; $2/GPU-hour rental assumed; ~$10k purchase (course material)"),
    Hardware("H100 80 GB", 80e9, 3.35e12, 989e12, 0.9, price_per_hour=3.0, price=30_000,
             source="NVIDIA H100 SXM datasheet; $3/GPU-hour rental and ~$30k purchase assumed"),
]}
# Model FLOPs utilisation in large training runs is typically 30-50%: OPT-175B reported 147 of A100's
# 312 TFLOP/s per GPU (47%); we assume 40%.
TRAINING: dict[str, Any] = {"hardware": "A100 80 GB", "utilization": 0.4}


def hardware(name: str | Hardware) -> Hardware:
    if isinstance(name, Hardware):
        return name
    if name not in HARDWARE:
        raise SLMLabError(f"no hardware called {name!r}; choose one of: {', '.join(HARDWARE)}.")
    return HARDWARE[name]


@dataclass(frozen=True)
class TrainingCost:
    flops: float
    gpu_hours: float
    dollars: float
    assumptions: str

    def days_on(self, n_gpus: int) -> float:
        return self.gpu_hours / n_gpus / 24


def training_cost(n_params: float, n_tokens: float, hw: str | Hardware = TRAINING["hardware"],
                  utilization: float = TRAINING["utilization"], price_per_hour: float | None = None) -> TrainingCost:
    """GPU-hours and dollars for 6·N·D FLOPs at `utilization` of hw's peak and its (or the given) hourly price."""
    hw = hardware(hw)
    if not 0 < utilization <= 1:
        raise SLMLabError(f"utilization={utilization} must be a fraction in (0, 1], e.g. 0.4 for 40% of peak.")
    price = price_per_hour if price_per_hour is not None else (hw.price_per_hour or 0.0)
    flops = training_flops(n_params, n_tokens)
    hours = flops / (hw.flops * utilization) / 3600
    return TrainingCost(flops, hours, hours * price,
                        f"{hw.name} at {utilization:.0%} of {hw.flops / 1e12:g} TFLOP/s, ${price:g}/h")


def memory_needed(arch: Arch, dtype: str = "bf16", context: int = 0, batch: int = 1) -> float:
    """Bytes for the weights plus the KV cache of `batch` sequences of `context` tokens."""
    return weight_bytes(total_params(arch), dtype) + (kv_cache_bytes(arch, context, batch, dtype) if context else 0.0)


def fits(arch: Arch, hw: str | Hardware, dtype: str = "bf16", context: int = 0, batch: int = 1) -> bool:
    """Does the model (weights + KV cache) fit in the share of hw's memory one model may use?"""
    hw = hardware(hw)
    return memory_needed(arch, dtype, context, batch) <= hw.memory * hw.usable


# ------------------------------------------------------------ claims, checked ----
@dataclass(frozen=True)
class Claim:
    claim: str
    stated: float
    estimate: float
    how: str

    @property
    def ratio(self) -> float:
        return self.estimate / self.stated


def claims() -> list[Claim]:
    """The course material's numbers next to what the formulas give from configs and stated assumptions."""
    gpt3, opt = card("GPT-3 175B"), card("OPT-175B")
    n3, n_opt = count_parameters(gpt3).total, count_parameters(opt).total
    a100 = HARDWARE["A100 80 GB"]
    assert gpt3.train_tokens and opt.train_tokens and a100.price   # stated in the registry (for the type checker)
    # OPT paper: 180B tokens, 992 A100 80GB, up to 147 TFLOP/s per GPU achieved.
    opt_days = training_flops(n_opt, opt.train_tokens) / (992 * 147e12) / 86400
    # GPT-4: only rumours (SemiAnalysis, Jul 2023): mixture of experts, ~280B parameters active per token,
    # ~13T tokens. OpenAI's CEO said training cost "more than $100 million" (Wired, Apr 2023).
    gpt4 = training_cost(280e9, 13e12)
    out = [Claim("GPT-3 has 175B parameters", 175e9, n3, "exact count from the paper's config"),
           Claim("GPT-3 training took 3.14e23 FLOPs (paper, Table D.1)", 3.14e23,
                 training_flops(n3, gpt3.train_tokens), "6·N·D with D = 300B tokens"),
           Claim("OPT-175B's 992 A100s cost ~$9M (course material)", 9e6, 992 * a100.price,
                 "992 × ~$10k per A100 80GB"),
           Claim("OPT-175B trained for about 2 months on 992 A100s (days)", 60.0, opt_days,
                 "6·N·D at the reported 147 TFLOP/s per GPU: pure compute; the paper's run had 35+ restarts"),
           Claim("GPT-4 cost over $100M to train", 100e6, gpt4.dollars,
                 f"rumoured 280B active parameters × 13T tokens; {gpt4.assumptions}")]
    for name, stated in (("Phi-3-mini", 3.8e9), ("Phi-3-small", 7e9), ("Phi-3-medium", 14e9)):
        out.append(Claim(f"{name} has {stated / 1e9:g}B parameters", stated,
                         count_parameters(card(name)).total, "exact count from its config"))
    return out
