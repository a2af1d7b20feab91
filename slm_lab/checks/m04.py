"""Checks for lab 04 — knowledge distillation: the distillation loss and one distillation step.

The loss is checked in three parts so a failure names the part that is wrong: the soft term alone
(alpha = 1), the hard term alone (alpha = 0), then the mix. Each wrong value is compared with what the
usual mistakes give (no T², KL arguments swapped, log-probabilities where probabilities belong, the
wrong reduction, the temperature on one side only) to say which one it is. The reference is
`slm_lab.distill` (distillation_loss; soft_kl for the mistakes).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from .. import distill as package
from . import call, expect_tensor, fail, forbids, passed

B, T_LEN, V = 3, 5, 11


# ------------------------------------------------------- references and mistakes ----
def _soft_slips(s, t, temp) -> dict[str, float]:
    """What the usual mistakes in the soft term give (alpha = 1) → what went wrong. Each is the package's
    KL (`slm_lab.distill.soft_kl`, the mean over positions) of changed inputs, or rescaled."""
    kl = package.soft_kl(s, t, temp)
    n_pos, T2 = B * T_LEN, temp**2
    log_q = F.log_softmax(s / temp, -1)
    p = F.softmax(t / temp, -1)
    return {
        "the KL term is not multiplied by T² — its gradients shrink like 1/T², so multiply by temperature**2":
            kl,
        "the KL term is multiplied by T, not T²": temp * kl,
        "KL arguments swapped — distil KL(teacher ‖ student): F.kl_div(student_log_probs, teacher_probs), "
        "the teacher's probabilities are the target": T2 * package.soft_kl(t, s, temp),
        "wrong reduction — reduction='mean' also divides by the vocabulary size; sum over the vocabulary, "
        "average over positions (reduction='batchmean' on (B·T, V))": T2 * kl / V,
        "wrong reduction — reduction='batchmean' on (B, T, V) divides by B only; reshape to (B·T, V) first":
            T2 * kl * n_pos / B,
        "wrong reduction — the KL is summed over positions; average it over positions": T2 * kl * n_pos,
        "the teacher's logits are not divided by the temperature": T2 * package.soft_kl(s, t * temp, temp),
        "the student's logits are not divided by the temperature": T2 * package.soft_kl(s * temp, t, temp),
        "probabilities where log-probabilities belong — F.kl_div's first argument is the student's "
        "log_softmax, not its softmax": T2 * (p * (p.log() - log_q.exp())).sum(-1).mean(),
        "log-probabilities where probabilities belong — weight (log p − log q) by the teacher's "
        "probabilities p, not by log p": T2 * (p.log() * (p.log() - log_q)).sum(-1).mean(),
    }


def _inputs(seed: int, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, T_LEN, V, generator=g) * scale
    t = torch.randn(B, T_LEN, V, generator=g) * scale
    y = torch.randint(0, V, (B, T_LEN), generator=g)
    return s, t, y


NAN_HINT = ("F.kl_div's target must be the teacher's probabilities (softmax), not log-probabilities or raw "
            "logits (or pass log_target=True with log-probabilities)")


def _loss_value(fn, s, t, y, temp, alpha, what, nan_hint=NAN_HINT):
    s_in = s.clone().requires_grad_(True)
    out = call(fn, s_in, t.clone(), y.clone(), temp, alpha, what=what)
    if isinstance(out, (float, int)):
        fail(f"{what} returned a Python number; return the loss as a tensor so that loss.backward() can run.")
    out = expect_tensor(out, what=what)
    if out.numel() != 1:
        fail(f"{what} returned shape {tuple(out.shape)}, expected one number — average over positions "
             "(and sum the KL over the vocabulary).")
    if not out.requires_grad:
        fail(f"{what}: the loss does not depend on the student logits through autograd — no .item(), "
             "no torch.no_grad() and no .detach() on the student side.")
    if not torch.isfinite(out).all():
        fail(f"{what} returned {out.item()} — {nan_hint}.")
    return out.detach().double().item()


def _close(a: float, b: float | torch.Tensor) -> bool:
    return math.isclose(a, float(b), rel_tol=1e-4, abs_tol=1e-6)


# ------------------------------------------------------------------- checks ----
@forbids("slm_lab.distill.distillation_loss", "slm_lab.distill.soft_kl")
def check_distillation_loss(distillation_loss) -> None:
    """distillation_loss(student_logits, teacher_logits, targets, temperature, alpha) → a 0-d tensor:
    alpha · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha) · CE(s, targets); logits (B, T, V)."""
    what = "distillation_loss"
    ref = package.distillation_loss
    s, t, y = _inputs(0)
    temp = 3.0
    soft, slips = ref(s, t, y, temp, 1.0).item(), _soft_slips(s, t, temp)
    hard = ref(s, t, y, temp, 0.0).item()
    hard_scaled = F.cross_entropy(s.reshape(-1, V) / temp, y.reshape(-1))          # CE on logits / T
    mixes = []
    for temp_, alpha, seed in ((3.0, 0.3, 1), (1.0, 0.8, 2), (0.5, 0.6, 3)):
        s_, t_, y_ = _inputs(seed)
        mixes.append((temp_, alpha, (s_, t_, y_), ref(s_, t_, y_, temp_, alpha).item(),
                      ref(s_, t_, y_, temp_, 1 - alpha).item(),
                      [ref(s_, t_, y_, T_, a_).item() for T_, a_ in ((2.0, alpha), (temp_, 0.5), (2.0, 0.5))]))
    s_big, t_big, y_big = _inputs(4, scale=100.0)
    ref_big = ref(s_big.double(), t_big.double(), y_big, 2.0, 0.5).item()

    got = _loss_value(distillation_loss, s, t, y, temp, 1.0, f"{what} (alpha=1)")
    if not _close(got, soft):
        for message, value in slips.items():
            if _close(got, value):
                fail(f"{what}: {message}.")
        if _close(got, hard):
            fail(f"{what}: alpha=1 gave the plain cross-entropy — alpha weights the soft (teacher) term and "
                 "1 − alpha the hard cross-entropy, not the other way round.")
        fail(f"{what} with alpha=1 (only the soft term) gives {got:.4f}, expected {soft:.4f}"
             " — T² · KL(softmax(teacher/T) ‖ softmax(student/T)), summed over the vocabulary, averaged over positions.")
    got = _loss_value(distillation_loss, s, t, y, temp, 0.0, f"{what} (alpha=0)")
    if not _close(got, hard):
        if _close(got, hard_scaled):
            fail(f"{what}: the hard-label cross-entropy uses logits divided by T — use the student's raw logits there.")
        fail(f"{what} with alpha=0 gives {got:.4f}, expected the plain cross-entropy with the targets, {hard:.4f}.")
    for temp, alpha, (s, t, y), expected, swapped, fixed in mixes:
        got = _loss_value(distillation_loss, s, t, y, temp, alpha, f"{what} (T={temp}, alpha={alpha})")
        if not _close(got, expected):
            if _close(got, swapped):
                fail(f"{what}: alpha weights the soft (teacher) term and 1 − alpha the hard cross-entropy, "
                     "not the other way round.")
            if any(_close(got, value) for value in fixed):
                fail(f"{what}: use the temperature and alpha arguments instead of fixed values.")
            fail(f"{what} with T={temp}, alpha={alpha} gives {got:.4f}, expected {expected:.4f} — "
                 "alpha · soft + (1 − alpha) · hard.")
    hint = "for large logits softmax underflows to 0; take log_softmax, not log(softmax(...))"
    got = _loss_value(distillation_loss, s_big, t_big, y_big, 2.0, 0.5, f"{what} (large logits)", nan_hint=hint)
    if not _close(got, ref_big):
        fail(f"{what} is inaccurate for large logits — {hint}.")
    passed("distillation loss", "T², KL direction, probabilities, reduction, mixing")


# -------------------------------------------------------------- distillation step ----
def _models(seed=0):
    from ..model import SLM, SLMConfig

    torch.manual_seed(seed)
    student = SLM(SLMConfig(vocab_size=V, block_size=8, n_layer=1, n_head=2, d_model=8))
    torch.manual_seed(seed + 100)
    teacher = SLM(SLMConfig(vocab_size=V, block_size=8, n_layer=2, n_head=2, d_model=16)).eval()
    with torch.no_grad():                       # a confident teacher: its soft targets are far from uniform
        teacher.lm_head.weight.mul_(40.0)
    return student, teacher


def _ref_step(student, teacher, opt, x, y, temp, alpha, clip=True):
    # The step of slm_lab.distill.distill (slm_lab.train.train's loop body, not a function of its own to call).
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        t = teacher(x).logits
    loss = package.distillation_loss(student(x).logits, t, y, temp, alpha)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    opt.step()
    return loss.item()


def _same_params(params, model) -> bool:
    """params (a list of tensors, as a probe returns them) equal model's parameters."""
    ref = list(model.parameters())
    return (isinstance(params, list) and len(params) == len(ref)
            and all(isinstance(p, torch.Tensor) and p.shape == q.shape and torch.allclose(p, q, atol=1e-5)
                    for p, q in zip(params, ref, strict=True)))


def _probe_distill_step(distill_step, batches: list, temp: float, alpha: float) -> dict:
    """Two of the student's steps on fresh models: the first loss, what happened to the teacher, and the
    student's parameters after each step."""
    what = "distill_step"
    student, teacher = _models()
    teacher_before = copy.deepcopy(teacher.state_dict())
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    loss = call(distill_step, student, teacher, opt, *batches[0], temp, alpha, what=what)
    after_one = [p.detach().clone() for p in student.parameters()]
    seen = {"loss": loss, "after_one": after_one,
            "teacher_grads": any(p.grad is not None for p in teacher.parameters()),
            "teacher_changed": any(not torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())}
    call(distill_step, student, teacher, opt, *batches[1], temp, alpha, what=what)
    return {**seen, "after_two": [p.detach().clone() for p in student.parameters()]}


@forbids("slm_lab.distill.distill")
def check_distill_step(distill_step) -> None:
    """distill_step(student, teacher, optimizer, x, y, temperature, alpha) → float: zero the student's
    gradients, teacher logits without gradients, distillation loss, backward, clip to 1.0, step."""
    what = "distill_step"
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, V, (4, 8), generator=g), torch.randint(0, V, (4, 8), generator=g)) for _ in range(2)]
    start, ref_teacher = _models()               # `start` stays as it was: the student before any step
    ref_student = copy.deepcopy(start)
    ref_opt = torch.optim.SGD(ref_student.parameters(), lr=0.5)
    temp, alpha = 2.0, 0.7
    x, y = batches[0]
    with torch.no_grad():
        s0, t0 = start(x).logits, ref_teacher(x).logits
        fixed_knobs = package.distillation_loss(s0, t0, y, 2.0, 0.5).item()
    expected = _ref_step(ref_student, ref_teacher, ref_opt, x, y, temp, alpha)
    _ref_step(ref_student, ref_teacher, ref_opt, *batches[1], temp, alpha)
    seen = call(_probe_distill_step, distill_step, batches, temp, alpha, what=what)
    loss = seen["loss"]
    if isinstance(loss, torch.Tensor):
        fail(f"{what} should return the loss as a Python float (loss.item()), not a tensor.")
    if not isinstance(loss, float):
        fail(f"{what} should return the loss as a float, got {type(loss).__name__}.")
    if seen["teacher_grads"]:
        fail(f"{what}: the teacher received gradients — compute its logits under torch.no_grad(); only the student learns.")
    if seen["teacher_changed"]:
        fail(f"{what}: the teacher's weights changed — the optimizer must only hold the student's parameters.")
    if not math.isclose(loss, expected, rel_tol=1e-4):
        if math.isclose(loss, fixed_knobs, rel_tol=1e-4):
            fail(f"{what}: pass the temperature and alpha arguments on to the loss.")
        fail(f"{what} returned loss {loss:.4f}, expected {expected:.4f} — the distillation loss of the student's "
             "logits against the teacher's, before the update.")
    if _same_params(seen["after_one"], start):
        fail(f"{what}: the student's parameters did not change — call loss.backward() and optimizer.step().")
    if not _same_params(seen["after_two"], ref_student):
        alt, alt_teacher = _models()
        alt_opt = torch.optim.SGD(alt.parameters(), lr=0.5)
        for xb, yb in batches:
            _ref_step(alt, alt_teacher, alt_opt, xb, yb, temp, alpha, clip=False)
        if _same_params(seen["after_two"], alt):
            fail(f"{what}: gradients are not clipped — call torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0) "
                 "before the step.")
        fail(f"{what}: after two steps the student differs from the reference — zero its gradients every step, "
             "clip them to norm 1.0, then optimizer.step().")
    passed("distill_step", "teacher frozen, loss, update, zero_grad, clipping")


CHECKS = {"04.distillation_loss": check_distillation_loss, "04.distill_step": check_distill_step}
