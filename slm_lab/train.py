"""Training: AdamW, warmup + cosine, clipping, accumulation, validation, checkpoints, resume — and presets.

With `out_dir`, a run writes a checkpoint every `save_interval` steps and at the end (model, optimizer,
step, RNG and history; each file atomically), and on Ctrl-C it finishes the step, saves, and says how to
resume. `train(..., resume=True)` continues from the last checkpoint mid-run: batches are a pure function
of (seed, step) (`data.step_generator`) and the schedule of the step, so the resumed loss curve equals
the uninterrupted one bit for bit (tests/test_train.py interrupts a run to show it).
"""
from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, load_trainer_state, save_checkpoint
from .data import encode_corpus, get_batch, load_corpus, step_generator, train_val_split
from .distributed import (
    average_gradients,
    barrier,
    broadcast_parameters,
    is_main,
    mean_over_ranks,
    rank,
    rank_micro_batches,
    world_size,
)
from .errors import SLMLabError
from .evaluate import fixed_batches, mean_loss
from .model import SLM, SLMConfig
from .settings import autocast, cache_dir, pick, profile, resolve_device
from .tokenizer import CharTokenizer

# TrainConfig fields that change how a run is saved, not what it computes: a cached model or a
# resumed run may differ in these.
RUN_ONLY_FIELDS = ("save_interval",)


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
    save_interval: int = 250            # with out_dir: a checkpoint every this many steps (0: only at the end)

    def __post_init__(self):
        self.betas = tuple(self.betas)
        for name in ("max_steps", "batch_size", "grad_accum", "eval_interval", "eval_batches"):
            if getattr(self, name) <= 0:
                raise SLMLabError(f"{name}={getattr(self, name)} must be a positive integer.")
        if self.save_interval < 0:
            raise SLMLabError(f"save_interval={self.save_interval} must be ≥ 0 (0 saves only at the end).")


def recipe(cfg: TrainConfig) -> dict:
    """The fields of a config that decide what a run computes, as plain JSON values."""
    d = {k: v for k, v in asdict(cfg).items() if k not in RUN_ONLY_FIELDS}
    d["betas"] = list(d["betas"])
    return d


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
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
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


class _DeferredInterrupt:
    """Ctrl-C during a step lets the step finish, so what is saved is a consistent state.

    A second Ctrl-C interrupts at once. Only the main thread can own a signal handler; elsewhere
    (a worker thread) Ctrl-C behaves as usual.
    """

    def __enter__(self) -> _DeferredInterrupt:
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _trainer_state(optimizer, step: int, history: History, cfg: TrainConfig) -> dict:
    state = {"optimizer": optimizer.state_dict(), "step": step, "rng": torch.get_rng_state(),
             "history": history.to_dict(), "train_config": asdict(cfg)}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def _resume(out_dir, model: SLM, optimizer, cfg: TrainConfig) -> tuple[History, int]:
    """Load model, optimizer, RNG and history from out_dir's last checkpoint; return (history, next step)."""
    if out_dir is None:
        raise SLMLabError("resume=True needs out_dir, the checkpoint directory to continue from.")
    state = load_trainer_state(out_dir)
    saved = {k: v for k, v in state["train_config"].items() if k not in RUN_ONLY_FIELDS}
    saved["betas"] = list(saved["betas"])
    differ = [f"{k}={saved.get(k)!r} (now {v!r})" for k, v in recipe(cfg).items() if saved.get(k) != v]
    if differ:
        raise SLMLabError(f"{out_dir} was trained with {', '.join(differ[:3])}; resume with the same "
                          "settings, or start a fresh run in another directory.")
    model.load_state_dict(load_checkpoint(out_dir).model.state_dict())
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return History(**state["history"]), int(state["step"])


def train(model: SLM, train_data: torch.Tensor, val_data: torch.Tensor | None, cfg: TrainConfig, *,
          out_dir: str | Path | None = None, resume: bool = False, tokenizer=None, meta: dict | None = None,
          progress: bool = True, callback: Callable[[History], None] | None = None,
          val_batches: list | None = None,
          loss_fn: Callable[[SLM, torch.Tensor, torch.Tensor, int, int], torch.Tensor] | None = None,
          device: str | torch.device | None = None) -> History:
    """Train `model` in place on token tensors; validate every cfg.eval_interval steps; checkpoint to out_dir.

    train_data, val_data: 1-D int64 token tensors. The model is moved to `device` (default: the course
    device, `settings.device()`) and stays there; on a GPU with bf16 the forward pass runs under autocast.
    val_batches: fixed (x, y) pairs to validate on (default: cfg.eval_batches blocks drawn from val_data).
    loss_fn(model, x, y, step, micro): the loss of one micro-batch x, y (B, T) to minimise (default: the
    model's cross-entropy; slm_lab.distill passes the distillation loss). Validation always uses cross-entropy.
    resume: continue from out_dir's last checkpoint (same config), mid-run or finished.
    Under torchrun (`slm_lab.distributed`), each of the N ranks draws its own cfg.grad_accum micro-batches,
    gradients are averaged over the ranks, and only rank 0 validates, shows progress and saves: the run
    equals one process with grad_accum N·cfg.grad_accum.
    """
    device = resolve_device(device)
    model.to(device)
    block = cfg.block_size or model.cfg.block_size
    optimizer = make_optimizer(model, cfg)
    n_ranks, micro_batches = world_size(), rank_micro_batches(rank(), cfg.grad_accum)
    history, start = History(tokens_per_step=cfg.batch_size * cfg.grad_accum * block * n_ranks), 0
    if resume:
        history, start = _resume(out_dir, model, optimizer, cfg)
    broadcast_parameters(model)
    if val_batches is None:
        if val_data is None:
            raise SLMLabError("train() needs val_data or val_batches to validate on; pass one of them.")
        val_batches = fixed_batches(val_data, block, cfg.eval_batch_size, cfg.eval_batches, seed=cfg.seed)

    def save(done: int) -> None:
        if out_dir is None:
            return
        if is_main():                  # one writer: N ranks writing the same files would race
            final = {"val_loss": history.val_loss[-1] if history.val_loss else None, "steps": done,
                     "complete": done >= cfg.max_steps}
            save_checkpoint(out_dir, model, tokenizer, {**(meta or {}), **final, "train_config": recipe(cfg)},
                            _trainer_state(optimizer, done, history, cfg))
        barrier()

    elapsed = history.train_time[-1] if history.train_time else 0.0
    model.train()
    bar = progress_bar(range(start, cfg.max_steps), progress and is_main(), start, cfg.max_steps)
    with _DeferredInterrupt() as interrupt:
        for step in bar:
            t0 = time.perf_counter()
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for micro, index in enumerate(micro_batches):                  # this rank's own micro-batches
                gen = step_generator(cfg.seed, step, index)
                x, y = get_batch(train_data, cfg.batch_size, block, gen, device)
                with autocast(device):
                    loss = (loss_fn(model, x, y, step, micro) if loss_fn else model(x, y).loss) / cfg.grad_accum
                loss.backward()
                loss_sum += loss.item()
            if n_ranks > 1:
                average_gradients(model.parameters(), n_ranks)
                loss_sum = mean_over_ranks(loss_sum)
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
            done = step + 1
            if (done % cfg.eval_interval == 0 or done == cfg.max_steps) and is_main():
                history.val_steps.append(done)
                history.val_loss.append(mean_loss(model, val_batches))
                history.val_time.append(elapsed)
                if callback:
                    callback(history)
            if hasattr(bar, "set_postfix") and (step % 10 == 0 or done == cfg.max_steps):
                post = {"loss": f"{loss_sum:.3f}"}
                if history.val_loss:
                    post["val"] = f"{history.val_loss[-1]:.3f}"
                bar.set_postfix(post)
            if interrupt.requested:
                if hasattr(bar, "close"):
                    bar.close()
                save(done)
                where = (f"saved to {out_dir}; resume with `slm-lab train --out {out_dir} --resume` or "
                         "train(..., resume=True)") if out_dir is not None else "nothing saved (no out_dir)"
                print(f"[slm_lab] training interrupted after step {done} of {cfg.max_steps}: {where}.")
                raise KeyboardInterrupt
            if cfg.save_interval and done % cfg.save_interval == 0 and done < cfg.max_steps:
                save(done)
    if out_dir is not None and (start < cfg.max_steps or not resume):
        save(cfg.max_steps)
    return history


def progress_bar(steps: Iterable[int], show: bool, start: int, total: int):
    """A tqdm bar over steps (notebook or terminal style), or the plain iterable when show is False."""
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
    # Module 11's target: three times wider (12 heads of 32), 9x the parameters of `small`, so that a
    # 2x64 draft costs about a tenth of its decode step (benchmarks/speculative.py measures the ratio).
    "medium": Preset(
        model=dict(family="llama", n_layer=4, n_head=12, d_model=384, block_size=128),
        train=TrainConfig(max_steps=1000, batch_size=16, lr=2e-3, min_lr=2e-4, warmup_steps=50,
                          weight_decay=0.1, betas=(0.9, 0.99), grad_clip=1.0, eval_interval=250),
        note="module 11's target model: 4 Llama blocks of width 384, about 10 minutes on 2 CPU cores"),
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
                          "eval_batches": 2, "batch_size": min(cfg.batch_size, 8), "save_interval": 0})


def preset_train_config(name: str, **overrides) -> TrainConfig:
    """A preset's recipe for the active profile; explicit overrides win over the smoke profile's cuts."""
    preset = get_preset(name)
    cfg = pick(smoke=smoke_sized(preset.train), full=preset.train)
    return TrainConfig(**{**asdict(cfg), **overrides})


def train_preset(name: str, out_dir: str | Path | None = None, corpus: str = "shakespeare",
                 progress: bool = True, callback=None, device: str | torch.device | None = None,
                 resume: bool = False, **overrides):
    """Build a preset's model, train it on a character corpus, save it; returns (model, tokenizer, history).

    overrides: TrainConfig fields (e.g. max_steps=300), applied after the profile's sizing.
    resume: continue the run checkpointed in out_dir.
    """
    from .settings import seed_everything

    preset = get_preset(name)
    tcfg = preset_train_config(name, **overrides)
    tok, train_ids, val_ids = prepare_char_data(corpus)
    seed_everything(tcfg.seed)
    model = SLM(preset.model_config(tok.vocab_size))
    meta = {"preset": name, "corpus": corpus, "profile": profile()}
    history = train(model, train_ids, val_ids, tcfg, out_dir=out_dir, tokenizer=tok, meta=meta,
                    progress=progress, callback=callback, device=device, resume=resume)
    return model, tok, history


def pretrained_path(name: str = "small", corpus: str = "shakespeare") -> Path:
    """Where the course caches a preset's trained checkpoint (smoke and full runs apart)."""
    return cache_dir("models") / f"{name}-{corpus}-{profile()}"


def pretrained(name: str = "small", corpus: str = "shakespeare", progress: bool = True, retrain: bool = False):
    """The course's trained model for a preset: loaded from the cache, or trained once and cached there.

    Smoke and full runs are cached apart, so a test run never replaces the real lesson's model. A cache
    written by an older recipe is trained again; a run of this recipe that was interrupted is resumed.
    """
    path = pretrained_path(name, corpus)
    resume = False
    if not retrain and (path / "model.safetensors").is_file():
        ckpt = load_checkpoint(path)
        preset = get_preset(name)
        expected = preset.model_config(ckpt.model.cfg.vocab_size).to_dict()
        want = recipe(preset_train_config(name))
        saved = {k: v for k, v in (ckpt.meta.get("train_config") or {}).items() if k not in RUN_ONLY_FIELDS}
        if ckpt.model.cfg.to_dict() == expected and saved == want:
            if ckpt.meta.get("steps") == want["max_steps"]:
                return ckpt
            resume = (path / "trainer_state.pt").is_file()
    train_preset(name, out_dir=path, corpus=corpus, progress=progress, resume=resume)
    return load_checkpoint(path)


if __name__ == "__main__":      # `torchrun -m slm_lab.train ...`: every rank runs `slm-lab train ...`
    import sys

    from .cli import main
    raise SystemExit(main(["train", *sys.argv[1:]]))
