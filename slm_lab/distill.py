"""Knowledge distillation: a small student learns from a larger teacher's whole next-token distribution.

    loss = alpha · T² · KL(p_teacher,T ‖ p_student,T) + (1 − alpha) · CE(student logits, targets)

p_·,T = softmax(logits / T). A temperature T > 1 flattens both distributions so the teacher's
ranking of the unlikely tokens ("dark knowledge") carries signal; the T² factor undoes the 1/T² by
which the soft term's gradient shrinks, so alpha means the same thing at every T (Hinton et al., 2015).
The KL is summed over the vocabulary and averaged over token positions — the same scale as the
cross-entropy.

The teacher can also be distilled from a *cache* of its top-k probabilities (`cache_teacher`): it runs
once over the exact batches the student will draw (batches are a pure function of (seed, step)), and
every later run with that seed and temperature (an alpha sweep, several student shapes) reuses them at
the cost of a plain training step. The probability outside the top k is kept as one more outcome.

Shapes: B batch, T time, V vocabulary, k cached tokens per position, S steps.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .data import get_batch, step_generator
from .errors import SLMLabError
from .model import SLM, SLMConfig
from .settings import cache_dir, pick, profile, resolve_device, seed_everything
from .train import History, TrainConfig, progress_bar, recipe, smoke_sized, train


class TopK(NamedTuple):
    """A teacher's k most likely next tokens per position at one temperature T: their log-probabilities
    log softmax(z/T) (..., k), their token ids (..., k), and log_rest (...): the log of the probability
    left for all other tokens together (-inf when k = V)."""
    log_probs: torch.Tensor
    indices: torch.Tensor
    log_rest: torch.Tensor
    temperature: float

    @classmethod
    def from_logits(cls, logits: torch.Tensor, k: int, temperature: float) -> TopK:
        """logits (..., V) → the top-k summary at temperature T."""
        log_p = F.log_softmax(logits.float() / temperature, dim=-1)
        top = log_p.topk(min(k, logits.shape[-1]), dim=-1)
        rest = log_p.scatter(-1, top.indices, float("-inf")).logsumexp(-1)
        return cls(top.values, top.indices, rest, temperature)


# ----------------------------------------------------------------------- loss ----
def _check_logits(student_logits: torch.Tensor, teacher, targets: torch.Tensor) -> None:
    if teacher is None:
        teacher = student_logits                     # alpha = 0: nothing to compare with the teacher
    t_shape = teacher.indices.shape[:-1] if isinstance(teacher, TopK) else teacher.shape[:-1]
    if student_logits.shape[:-1] != t_shape or student_logits.shape[:-1] != targets.shape:
        raise SLMLabError(f"student logits {tuple(student_logits.shape)}, teacher "
                          f"{tuple(t_shape)} + (V,) and targets {tuple(targets.shape)} must cover the same "
                          "positions; feed the teacher the same x as the student.")
    if not isinstance(teacher, TopK) and teacher.shape[-1] != student_logits.shape[-1]:
        raise SLMLabError(f"the teacher has {teacher.shape[-1]} vocabulary entries and the student "
                          f"{student_logits.shape[-1]}; both must use the same tokenizer.")


def soft_kl(student_logits: torch.Tensor, teacher: torch.Tensor | TopK, temperature: float) -> torch.Tensor:
    """Mean over positions of KL(p_teacher,T ‖ p_student,T), summed over the vocabulary (nats).

    student_logits (..., V); teacher: logits (..., V), or a TopK — then the KL is taken over k + 1
    outcomes: the k cached tokens, and "any other token" with the teacher's leftover probability. (Only
    renormalising over the k would tell the student the other tokens are impossible.)
    """
    V = student_logits.shape[-1]
    log_q = F.log_softmax(student_logits.float().reshape(-1, V) / temperature, dim=-1)       # (N, V)
    if not isinstance(teacher, TopK):
        log_p = F.log_softmax(teacher.float().reshape(-1, V) / temperature, dim=-1)            # (N, V)
        return (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    if teacher.temperature != temperature:
        raise SLMLabError(f"the cached teacher probabilities are at temperature {teacher.temperature}, not "
                          f"{temperature}; build the cache at the temperature you train with.")
    k = teacher.indices.shape[-1]
    idx = teacher.indices.reshape(-1, k).long()
    log_p = teacher.log_probs.float().reshape(-1, k)                                              # (N, k)
    top = (log_p.exp() * (log_p - log_q.gather(-1, idx))).sum(-1)
    log_p_rest = teacher.log_rest.float().reshape(-1)                                             # (N,)
    log_q_rest = log_q.scatter(-1, idx, float("-inf")).logsumexp(-1)                             # (N,)
    has_rest = torch.isfinite(log_p_rest) & torch.isfinite(log_q_rest)
    rest = torch.where(has_rest, log_p_rest.exp() * (log_p_rest - log_q_rest.where(has_rest, 0.0)), 0.0)
    return (top + rest).mean()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | TopK | None,
                      targets: torch.Tensor, temperature: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """alpha · T² · KL(teacher_T ‖ student_T) + (1 − alpha) · CE(student, targets), a 0-d tensor.

    student_logits (B, T, V) or (N, V); teacher_logits the same shape (or a TopK); targets (B, T) or (N,).
    alpha = 1 is pure distillation, alpha = 0 is ordinary training on the hard targets (teacher may be None).
    """
    if temperature <= 0:
        raise SLMLabError(f"temperature={temperature} must be positive (1 leaves the distributions as they are).")
    if not 0.0 <= alpha <= 1.0:
        raise SLMLabError(f"alpha={alpha} must be in [0, 1]: the weight of the teacher's soft targets.")
    _check_logits(student_logits, teacher_logits, targets)
    V = student_logits.shape[-1]
    hard = F.cross_entropy(student_logits.float().reshape(-1, V), targets.reshape(-1))
    if alpha == 0.0:
        return hard
    if teacher_logits is None:
        raise SLMLabError(f"alpha={alpha} weighs the teacher's soft targets, but teacher_logits is None; "
                          "pass the teacher's logits (or a TopK), or alpha=0 to train on the hard targets alone.")
    return alpha * temperature**2 * soft_kl(student_logits, teacher_logits, temperature) + (1 - alpha) * hard


# ------------------------------------------------------------ teacher cache ----
@dataclass
class TeacherCache:
    """The teacher's top-k at one temperature for every (step, micro-batch) a run with `seed` draws."""
    log_probs: torch.Tensor  # (S, grad_accum, B, T, k) float16
    indices: torch.Tensor    # (S, grad_accum, B, T, k) int16 (uint8 would do for characters)
    log_rest: torch.Tensor   # (S, grad_accum, B, T) float32: the probability outside the top k
    temperature: float
    seed: int
    block_size: int
    seconds: float           # what building it cost (teacher forward passes)

    def get(self, step: int, micro: int = 0) -> TopK:
        if step >= self.indices.shape[0]:
            raise SLMLabError(f"the teacher cache covers {self.indices.shape[0]} steps, not step {step}; "
                              "build it with at least max_steps steps.")
        return TopK(self.log_probs[step, micro], self.indices[step, micro], self.log_rest[step, micro],
                    self.temperature)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.log_probs, self.indices, self.log_rest))


@torch.no_grad()
def cache_teacher(teacher: SLM, train_data: torch.Tensor, cfg: TrainConfig, k: int = 8,
                  temperature: float = 2.0, block_size: int | None = None, progress: bool = True) -> TeacherCache:
    """Run the teacher once over the batches `distill(..., cfg)` will draw and keep its top-k at temperature.

    block_size: the student's training block (default cfg.block_size).
    """
    block = block_size or cfg.block_size
    if block is None:
        raise SLMLabError("cache_teacher needs the block size the student trains on; "
                          "pass block_size=student.cfg.block_size.")
    k = min(k, teacher.cfg.vocab_size)
    device = next(teacher.parameters()).device
    teacher.eval()
    shape = (cfg.max_steps, cfg.grad_accum, cfg.batch_size, block)
    log_probs, indices = torch.empty(shape + (k,), dtype=torch.float16), torch.empty(shape + (k,), dtype=torch.int16)
    log_rest = torch.empty(shape)
    t0 = time.perf_counter()
    for step in progress_bar(range(cfg.max_steps), progress, 0, cfg.max_steps):
        for micro in range(cfg.grad_accum):
            x, _ = get_batch(train_data, cfg.batch_size, block, step_generator(cfg.seed, step, micro), device)
            top = TopK.from_logits(teacher(x).logits, k, temperature)
            log_probs[step, micro], indices[step, micro] = top.log_probs.cpu(), top.indices.cpu()
            log_rest[step, micro] = top.log_rest.cpu()
    return TeacherCache(log_probs, indices, log_rest, temperature, cfg.seed, block, time.perf_counter() - t0)


# ---------------------------------------------------------------- training ----
def distill(student: SLM, teacher: SLM | None, train_data: torch.Tensor, val_data: torch.Tensor | None,
            cfg: TrainConfig, temperature: float = 2.0, alpha: float = 0.5, *,
            teacher_cache: TeacherCache | None = None, progress: bool = True,
            callback: Callable[[History], None] | None = None, val_batches: list | None = None,
            device: str | torch.device | None = None) -> History:
    """Train `student` in place on the distillation loss; the same loop, batches and schedule as
    `slm_lab.train.train`, so alpha = 0 reproduces it exactly (and then needs no teacher).

    The teacher runs under no_grad in eval mode on the student's batches, unless `teacher_cache` holds
    its top-k for them (built with the same seed, block size and temperature). History.train_time
    includes the teacher's forward passes (not the cache's). Student and teacher run on `device`
    (default: the course device).
    """
    device = resolve_device(device)
    block = cfg.block_size or student.cfg.block_size
    needs_teacher = alpha > 0
    if needs_teacher and teacher is None and teacher_cache is None:
        raise SLMLabError("alpha > 0 needs a teacher model or a teacher_cache; pass one, or alpha=0 to train alone.")
    if teacher is not None:
        if teacher.cfg.vocab_size != student.cfg.vocab_size:
            raise SLMLabError(f"teacher vocabulary {teacher.cfg.vocab_size} != student vocabulary "
                              f"{student.cfg.vocab_size}; distil between models that share a tokenizer.")
        if block > teacher.cfg.block_size:
            raise SLMLabError(f"the student trains on blocks of {block} tokens but the teacher reads at most "
                              f"{teacher.cfg.block_size}; use block_size ≤ {teacher.cfg.block_size}.")
        teacher.to(device).eval()
    if teacher_cache is not None and (teacher_cache.seed != cfg.seed or teacher_cache.block_size != block
                                      or teacher_cache.temperature != temperature):
        raise SLMLabError(f"the teacher cache was built for seed {teacher_cache.seed}, blocks of "
                          f"{teacher_cache.block_size} and T = {teacher_cache.temperature}; this run uses seed "
                          f"{cfg.seed}, {block} and T = {temperature}; rebuild it.")
    def step_loss(model: SLM, x: torch.Tensor, y: torch.Tensor, step: int, micro: int) -> torch.Tensor:
        logits = model(x).logits
        if not needs_teacher:
            soft = None
        elif teacher_cache is not None:
            top = teacher_cache.get(step, micro)
            soft = top._replace(**{f: getattr(top, f).to(x.device) for f in ("log_probs", "indices", "log_rest")})
        else:
            assert teacher is not None   # refused above: alpha > 0 with neither a teacher nor a cache
            with torch.no_grad():
                soft = teacher(x).logits
        return distillation_loss(logits, soft, y, temperature, alpha if needs_teacher else 0.0)

    return train(student, train_data, val_data, cfg, progress=progress, callback=callback,
                 val_batches=val_batches, loss_fn=step_loss, device=device)


# ------------------------------------------------------- the course's student ----
# Several times smaller than module 02's `small` teacher: 2 Llama blocks of width 64 (4 heads of 16),
# trained on blocks of 128 characters. The learning rate is the best of {3e-3, 5e-3, 1e-2, 2e-2} for the
# student trained alone, averaged over held-out seeds (benchmarks/distill.py --lr-sweep; 1e-2 is best on
# one seed and much worse on others); T and alpha come from notebook 04's sweep.
STUDENT_MODEL = dict(family="llama", n_layer=2, n_head=4, d_model=64, block_size=128)
STUDENT_TRAIN = TrainConfig(max_steps=1500, batch_size=16, lr=5e-3, min_lr=5e-4, warmup_steps=50,
                            weight_decay=0.1, betas=(0.9, 0.99), grad_clip=1.0, eval_interval=100,
                            eval_batches=20, eval_batch_size=16)
TEMPERATURE, ALPHA = 1.0, 0.5


def student_config(vocab_size: int, **overrides) -> SLMConfig:
    """The course's distillation student for a vocabulary (overrides change its shape)."""
    return SLMConfig(vocab_size=vocab_size, **{**STUDENT_MODEL, **overrides})


def student_train_config(**overrides) -> TrainConfig:
    """The student's recipe for the active profile (a few steps in smoke)."""
    cfg = replace(STUDENT_TRAIN, **overrides)
    return pick(smoke=smoke_sized(cfg), full=cfg)


def fingerprint(path: str | Path) -> str:
    """A short hash of a checkpoint's weights file: a cached student remembers which teacher taught it."""
    h = hashlib.sha256()
    with open(Path(path) / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def distilled_path(teacher: str = "small", corpus: str = "shakespeare") -> Path:
    """Where the course caches the distilled student (smoke and full runs apart)."""
    return cache_dir("models") / f"distilled-{teacher}-{corpus}-{profile()}"


def distilled_student(teacher: str = "small", corpus: str = "shakespeare", progress: bool = True,
                      retrain: bool = False) -> Checkpoint:
    """The course's distilled student: loaded from the cache, or distilled once from
    `slm_lab.train.pretrained(teacher)` and cached. A student of another teacher or an older recipe
    (shape, training config, T, alpha) is distilled again."""
    from .train import prepare_char_data, pretrained

    teacher_ckpt = pretrained(teacher, corpus, progress=progress)
    tcfg = student_train_config()
    wanted = {"teacher_fingerprint": fingerprint(teacher_ckpt.path), "temperature": TEMPERATURE, "alpha": ALPHA,
              "train_config": recipe(tcfg)}
    path = distilled_path(teacher, corpus)
    if not retrain and (path / "model.safetensors").is_file():
        cached = load_checkpoint(path)
        expected = student_config(cached.model.cfg.vocab_size).to_dict()
        if cached.model.cfg.to_dict() == expected and all(cached.meta.get(k) == v for k, v in wanted.items()):
            return cached
    tok, train_ids, val_ids = prepare_char_data(corpus)
    seed_everything(tcfg.seed)
    student = SLM(student_config(tok.vocab_size))
    history = distill(student, teacher_ckpt.model, train_ids, val_ids, tcfg, TEMPERATURE, ALPHA, progress=progress)
    meta = {"preset": "distilled", "teacher": teacher, "corpus": corpus, "profile": profile(), **wanted,
            "val_loss": history.val_loss[-1], "steps": tcfg.max_steps}
    save_checkpoint(path, student, tok, meta)
    return load_checkpoint(path)
