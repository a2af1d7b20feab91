"""Training: AdamW, warmup + cosine, clipping, accumulation, validation, checkpoints, resume — and presets.

Batches are a pure function of (seed, step): a run resumed from a checkpoint draws exactly the
batches the uninterrupted run would have drawn, so the two loss curves coincide.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import load_checkpoint, load_trainer_state, save_checkpoint
from .data import encode_corpus, get_batch, load_corpus, train_val_split
from .errors import SLMLabError
from .evaluate import fixed_batches, mean_loss
from .model import SLM, SLMConfig
from .settings import cache_dir, pick, profile
from .tokenizer import CharTokenizer


@dataclass
class TrainConfig:
    max_steps: int = 2000
    batch_size: int = 32
    block_size: int | None = None       # default: the model's block_size
    grad_accum: int = 1                 # micro-batches per optimizer step
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    decay_steps: int | None = None      # cosine reaches min_lr here (default max_steps)
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0              # 0 disables clipping
    eval_interval: int = 200
    eval_batches: int = 20
    eval_batch_size: int = 32
    seed: int = 1337

    def __post_init__(self):
        self.betas = tuple(self.betas)
        for name in ("max_steps", "batch_size", "grad_accum", "eval_interval", "eval_batches"):
            if getattr(self, name) <= 0:
                raise SLMLabError(f"{name}={getattr(self, name)} must be a positive integer.")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.min_lr at decay_steps, flat after."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay = cfg.decay_steps or cfg.max_steps
    if step >= decay:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, decay - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: norms, biases (1-D) are not decayed."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


@dataclass
class History:
    """What happened during training, ready to plot."""
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    train_time: list[float] = field(default_factory=list)    # seconds spent training (eval excluded)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_time: list[float] = field(default_factory=list)      # train_time when each val loss was measured
    tokens_per_step: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_per_step * len(self.steps) / max(1e-9, self.train_time[-1]) if self.steps else 0.0


def _batch_generator(cfg: TrainConfig, step: int, micro: int) -> torch.Generator:
    return torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 131 + micro)


def train(model: SLM, train_data: torch.Tensor, val_data: torch.Tensor, cfg: TrainConfig, *,
          out_dir: str | Path | None = None, resume: bool = False, tokenizer=None, meta: dict | None = None,
          progress: bool = True, callback: Callable[[History], None] | None = None,
          val_batches: list | None = None,
          loss_fn: Callable[[SLM, torch.Tensor, torch.Tensor, int, int], torch.Tensor] | None = None) -> History:
    """Train `model` in place on token tensors; validate every cfg.eval_interval steps; save to out_dir at the end.

    val_batches: fixed (x, y) pairs to validate on (default: cfg.eval_batches blocks drawn from val_data).
    loss_fn(model, x, y, step, micro): the loss of one micro-batch x, y (B, T) to minimise (default: the
    model's cross-entropy; slm_lab.distill passes the distillation loss). Validation always uses cross-entropy.
    """
    device = next(model.parameters()).device
    block = cfg.block_size or model.cfg.block_size
    optimizer = make_optimizer(model, cfg)
    history, start = History(tokens_per_step=cfg.batch_size * cfg.grad_accum * block), 0
    if resume:
        if out_dir is None:
            raise SLMLabError("resume=True needs out_dir, the checkpoint directory to continue from.")
        state = load_trainer_state(out_dir)
        model.load_state_dict(load_checkpoint(out_dir).model.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        history, start = History(**state["history"]), state["step"]
    if val_batches is None:
        val_batches = fixed_batches(val_data, block, cfg.eval_batch_size, cfg.eval_batches, seed=cfg.seed)
    elapsed = history.train_time[-1] if history.train_time else 0.0
    model.train()
    bar = _progress(range(start, cfg.max_steps), progress, start, cfg.max_steps)
    for step in bar:
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            x, y = get_batch(train_data, cfg.batch_size, block, _batch_generator(cfg, step, micro), device)
            loss = (loss_fn(model, x, y, step, micro) if loss_fn else model(x, y).loss) / cfg.grad_accum
            loss.backward()
            loss_sum += loss.item()
        if not math.isfinite(loss_sum):
            raise SLMLabError(f"the loss became {loss_sum} at step {step}; lower the learning rate (now {lr:.2e}).")
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed += time.perf_counter() - t0
        history.steps.append(step)
        history.train_loss.append(loss_sum)
        history.lr.append(lr)
        history.train_time.append(elapsed)
        if (step + 1) % cfg.eval_interval == 0 or step + 1 == cfg.max_steps:
            history.val_steps.append(step + 1)
            history.val_loss.append(mean_loss(model, val_batches))
            history.val_time.append(elapsed)
            if callback:
                callback(history)
        if hasattr(bar, "set_postfix") and (step % 10 == 0 or step + 1 == cfg.max_steps):
            post = {"loss": f"{loss_sum:.3f}"}
            if history.val_loss:
                post["val"] = f"{history.val_loss[-1]:.3f}"
            bar.set_postfix(post)
    if out_dir is not None:
        trainer_state = {"optimizer": optimizer.state_dict(), "step": cfg.max_steps,
                         "rng": torch.get_rng_state(), "history": history.to_dict(), "train_config": asdict(cfg)}
        final = {"val_loss": history.val_loss[-1] if history.val_loss else None, "steps": cfg.max_steps}
        save_checkpoint(out_dir, model, tokenizer, {**(meta or {}), **final, "train_config": asdict(cfg)},
                        trainer_state)
    return history


def _progress(steps, show: bool, start: int, total: int):
    if not show:
        return steps
    from tqdm.auto import tqdm

    return tqdm(steps, initial=start, total=total, desc="train", mininterval=0.5, leave=True)


# ---------------------------------------------------------------- presets ----
@dataclass
class Preset:
    """A model shape and a training recipe that go together."""
    model: dict
    train: TrainConfig
    note: str = ""

    def model_config(self, vocab_size: int) -> SLMConfig:
        return SLMConfig(vocab_size=vocab_size, **self.model)


PRESETS: dict[str, Preset] = {
    # nanoGPT's CPU recipe for Shakespeare characters, as a GPT-2-family config of our model.
    "nanogpt-cpu": Preset(
        model=dict(family="gpt2", n_layer=4, n_head=4, d_model=128, block_size=64, bias=False, dropout=0.0),
        train=TrainConfig(max_steps=2000, batch_size=12, lr=1e-3, min_lr=1e-4, warmup_steps=100,
                          weight_decay=0.1, betas=(0.9, 0.99), grad_clip=1.0, eval_interval=100),
        note="nanoGPT's CPU Shakespeare recipe (4×128, block 64, batch 12, 2000 iterations)"),
    # Tuned against nanogpt-cpu by benchmarks/train_speed.py: on 2 CPU cores wall time, not steps, is
    # the budget, so a shallow model (2 layers run ~1.7x faster than 4) with a 3x higher learning rate,
    # Llama blocks (RMSNorm, RoPE, SwiGLU) and twice the context wins.
    "tiny": Preset(
        model=dict(family="llama", n_layer=2, n_head=4, d_model=128, block_size=128),
        train=TrainConfig(max_steps=1000, batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=30,
                          weight_decay=0.1, betas=(0.9, 0.99), grad_clip=1.0, eval_interval=100),
        note="the course's quick model: 2 Llama blocks, about a minute on 2 CPU cores"),
    # Module 02's model, and the teacher / starting point of modules 04-08: four Llama blocks, sized so
    # that training fits in about 6 minutes on 2 CPU cores (7M tokens seen).
    "small": Preset(
        model=dict(family="llama", n_layer=4, n_head=4, d_model=128, block_size=128),
        train=TrainConfig(max_steps=1700, batch_size=32, lr=3e-3, min_lr=3e-4, warmup_steps=50,
                          weight_decay=0.1, betas=(0.9, 0.99), grad_clip=1.0, eval_interval=100),
        note="module 02's model: 4 Llama blocks, about 6 minutes on 2 CPU cores"),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise SLMLabError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return PRESETS[name]


def prepare_char_data(corpus: str = "shakespeare", val_fraction: float = 0.1):
    """A character tokenizer over the corpus and its train/val token tensors."""
    text = load_corpus(corpus)
    tok = CharTokenizer(text)
    train_ids, val_ids = train_val_split(encode_corpus(text, tok), val_fraction)
    return tok, train_ids, val_ids


def smoke_sized(cfg: TrainConfig) -> TrainConfig:
    """The same recipe cut to a few steps for the smoke profile (tests)."""
    return TrainConfig(**{**asdict(cfg), "max_steps": 20, "warmup_steps": 5, "eval_interval": 10,
                          "eval_batches": 2, "batch_size": min(cfg.batch_size, 8)})


def train_preset(name: str, out_dir: str | Path | None = None, corpus: str = "shakespeare",
                 progress: bool = True, callback=None, device: str | torch.device = "cpu", **overrides):
    """Build a preset's model, train it on a character corpus, save it; returns (model, tokenizer, history)."""
    from .settings import seed_everything

    preset = get_preset(name)
    tcfg = TrainConfig(**{**asdict(preset.train), **overrides})
    tcfg = pick(smoke=smoke_sized(tcfg), full=tcfg)
    tok, train_ids, val_ids = prepare_char_data(corpus)
    seed_everything(tcfg.seed)
    model = SLM(preset.model_config(tok.vocab_size)).to(device)
    meta = {"preset": name, "corpus": corpus, "profile": profile()}
    history = train(model, train_ids, val_ids, tcfg, out_dir=out_dir, tokenizer=tok, meta=meta,
                    progress=progress, callback=callback)
    return model, tok, history


def pretrained_path(name: str = "small", corpus: str = "shakespeare") -> Path:
    """Where the course caches a preset's trained checkpoint (smoke and full runs apart)."""
    return cache_dir("models") / f"{name}-{corpus}-{profile()}"


def pretrained(name: str = "small", corpus: str = "shakespeare", progress: bool = True, retrain: bool = False):
    """The course's trained model for a preset: loaded from the cache, or trained once and cached there.

    Smoke and full runs are cached apart, so a test run never replaces the real lesson's model.
    """
    path = pretrained_path(name, corpus)
    if not retrain and (path / "model.safetensors").is_file():
        ckpt = load_checkpoint(path)
        # A cache written by an older recipe of this preset is stale: train again.
        preset = get_preset(name)
        expected = preset.model_config(ckpt.model.cfg.vocab_size).to_dict()
        recipe = asdict(pick(smoke=smoke_sized(preset.train), full=preset.train))
        recipe["betas"] = list(recipe["betas"])
        if ckpt.model.cfg.to_dict() == expected and ckpt.meta.get("train_config") == recipe:
            return ckpt
    train_preset(name, out_dir=path, corpus=corpus, progress=progress)
    return load_checkpoint(path)
