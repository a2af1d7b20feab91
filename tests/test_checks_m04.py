"""Lab 04 checks accept the reference, reject the unsolved stub and name each planted mistake in one line."""
import pytest
import torch
import torch.nn.functional as F

from slm_lab.checks import m04
from checking import rejects, todo
from slm_lab.distill import distillation_loss


def loss_with(kl_fn, ce_on_scaled=False, swap_alpha=False):
    """A distillation loss whose soft term is kl_fn(s, t, T) — the place where most mistakes go."""
    def fn(s, t, y, T, alpha):
        a = 1 - alpha if swap_alpha else alpha
        hard = F.cross_entropy(s.reshape(-1, s.shape[-1]) / (T if ce_on_scaled else 1.0), y.reshape(-1))
        return a * kl_fn(s, t, T) + (1 - a) * hard
    return fn


def flat(x):
    return x.reshape(-1, x.shape[-1])


GOOD_KL = lambda s, t, T: T * T * F.kl_div(F.log_softmax(flat(s) / T, -1), F.softmax(flat(t) / T, -1), reduction="batchmean")

SOFT_MISTAKES = {
    "not multiplied by T²": lambda s, t, T: F.kl_div(F.log_softmax(flat(s) / T, -1), F.softmax(flat(t) / T, -1),
                                                    reduction="batchmean"),
    "multiplied by T, not T²": lambda s, t, T: T * F.kl_div(F.log_softmax(flat(s) / T, -1), F.softmax(flat(t) / T, -1),
                                                           reduction="batchmean"),
    "KL arguments swapped": lambda s, t, T: T * T * F.kl_div(F.log_softmax(flat(t) / T, -1), F.softmax(flat(s) / T, -1),
                                                            reduction="batchmean"),
    "probabilities where log-probabilities belong": lambda s, t, T: T * T * F.kl_div(
        F.softmax(flat(s) / T, -1), F.softmax(flat(t) / T, -1), reduction="batchmean"),
    "must be the teacher's probabilities": lambda s, t, T: T * T * F.kl_div(
        F.log_softmax(flat(s) / T, -1), F.log_softmax(flat(t) / T, -1), reduction="batchmean"),
    "not by log p": lambda s, t, T: T * T * (F.log_softmax(t / T, -1) * (F.log_softmax(t / T, -1)
                                                                        - F.log_softmax(s / T, -1))).sum(-1).mean(),
    "reduction='mean'": lambda s, t, T: T * T * F.kl_div(F.log_softmax(flat(s) / T, -1), F.softmax(flat(t) / T, -1),
                                                         reduction="mean"),
    "divides by B only": lambda s, t, T: T * T * F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1),
                                                          reduction="batchmean"),
    "teacher's logits are not divided": lambda s, t, T: T * T * F.kl_div(
        F.log_softmax(flat(s) / T, -1), F.softmax(flat(t), -1), reduction="batchmean"),
    "large logits": lambda s, t, T: T * T * (F.softmax(t / T, -1) * (F.softmax(t / T, -1).log()
                                                                    - F.softmax(s / T, -1).log())).sum(-1).mean(),
}


def test_distillation_loss_check_accepts_the_reference_and_the_package():
    m04.check_distillation_loss(loss_with(GOOD_KL))
    m04.check_distillation_loss(distillation_loss)


@pytest.mark.filterwarnings("ignore:reduction")       # torch warns about kl_div(reduction="mean"): that is the point
@pytest.mark.parametrize("match", list(SOFT_MISTAKES))
def test_distillation_loss_check_names_each_soft_term_mistake(match):
    rejects(m04.check_distillation_loss, loss_with(SOFT_MISTAKES[match]), match=match)


def test_distillation_loss_check_names_hard_term_mixing_and_output_mistakes():
    rejects(m04.check_distillation_loss, todo, match="not done yet")
    rejects(m04.check_distillation_loss, loss_with(GOOD_KL, ce_on_scaled=True), match="hard-label cross-entropy uses logits divided by T")
    rejects(m04.check_distillation_loss, loss_with(GOOD_KL, swap_alpha=True), match="not the other way round")
    rejects(m04.check_distillation_loss, lambda s, t, y, T, a: loss_with(GOOD_KL)(s, t, y, 2.0, 0.5)
            if (T, a) not in ((3.0, 1.0), (3.0, 0.0)) else loss_with(GOOD_KL)(s, t, y, T, a), match="use the temperature and alpha")
    rejects(m04.check_distillation_loss, lambda *a: loss_with(GOOD_KL)(*a).item(), match="Python number")
    rejects(m04.check_distillation_loss, lambda s, t, y, T, a: loss_with(GOOD_KL)(s.detach(), t, y, T, a), match="does not depend")
    per_position = lambda s, t, y, T, a: T * T * F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1),
                                                           reduction="none").sum(-1)
    rejects(m04.check_distillation_loss, per_position, match="expected one number")


# ------------------------------------------------------------------ distill_step ----
def step_good(student, teacher, opt, x, y, T, alpha):
    opt.zero_grad()
    with torch.no_grad():
        t = teacher(x).logits
    loss = distillation_loss(student(x).logits, t, y, T, alpha)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    opt.step()
    return loss.item()


def step_teacher_grads(student, teacher, opt, x, y, T, alpha):
    opt.zero_grad()
    loss = distillation_loss(student(x).logits, teacher(x).logits, y, T, alpha)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    opt.step()
    return loss.item()


def step_no_clip(student, teacher, opt, x, y, T, alpha):
    opt.zero_grad()
    with torch.no_grad():
        t = teacher(x).logits
    loss = distillation_loss(student(x).logits, t, y, T, alpha)
    loss.backward()
    opt.step()
    return loss.item()


def step_no_zero_grad(student, teacher, opt, x, y, T, alpha):
    with torch.no_grad():
        t = teacher(x).logits
    loss = distillation_loss(student(x).logits, t, y, T, alpha)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    opt.step()
    return loss.item()


def step_fixed_knobs(student, teacher, opt, x, y, T, alpha):
    return step_good(student, teacher, opt, x, y, 2.0, 0.5)


def test_distill_step_check():
    m04.check_distill_step(step_good)
    rejects(m04.check_distill_step, todo, match="not done yet")
    rejects(m04.check_distill_step, step_teacher_grads, match="teacher received gradients")
    rejects(m04.check_distill_step, step_no_clip, match="not clipped")
    rejects(m04.check_distill_step, step_no_zero_grad, match="zero its gradients every step")
    rejects(m04.check_distill_step, step_fixed_knobs, match="pass the temperature and alpha")
    rejects(m04.check_distill_step, lambda *a: torch.tensor(step_good(*a)), match="Python float")
    rejects(m04.check_distill_step, lambda s, t, o, x, y, T, a: 0.0 * step_good(s, t, o, x, y, T, a) + 1.0, match="returned loss")
