"""Distillation: the loss against independent references, its gradient scale, the training loop against
slm_lab.train.train, the top-k teacher cache, the cached student, and bad input."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, kl_divergence

from slm_lab import distill as D
from slm_lab.checkpoint import load_checkpoint, save_checkpoint
from slm_lab.errors import SLMLabError
from slm_lab.model import SLM, SLMConfig
from slm_lab.train import TrainConfig, train

V = 12


def logits(*shape, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return SLM(SLMConfig(**{**dict(vocab_size=V, block_size=16, n_layer=1, n_head=2, d_model=16), **kw}))


def cfg(**kw):
    return TrainConfig(**{**dict(max_steps=12, batch_size=4, block_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=2,
                                 eval_interval=6, eval_batches=2, eval_batch_size=4, seed=3), **kw})


def data(n=3000):
    return (torch.arange(n) * 7 + torch.arange(n) // 5) % V      # a learnable, not trivial, sequence


# ------------------------------------------------------------------ the loss ----
def test_pure_distillation_at_t1_is_the_mean_kl_of_torch_distributions():
    s, t = logits(3, 5, V, seed=1), logits(3, 5, V, seed=2)
    y = torch.randint(0, V, (3, 5))
    ref = kl_divergence(Categorical(logits=t), Categorical(logits=s)).mean()     # KL(teacher ‖ student)
    assert D.distillation_loss(s, t, y, temperature=1.0, alpha=1.0).item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("T,alpha", [(2.0, 0.5), (4.0, 0.9), (0.5, 0.25)])
def test_loss_mixes_t2_scaled_kl_with_hard_cross_entropy(T, alpha):
    s, t = logits(4, 7, V, seed=3), logits(4, 7, V, seed=4)
    y = torch.randint(0, V, (4, 7), generator=torch.Generator().manual_seed(5))
    kl = kl_divergence(Categorical(logits=t / T), Categorical(logits=s / T)).mean()
    ce = -torch.log_softmax(s, -1).gather(-1, y[..., None]).mean()
    expected = alpha * T * T * kl + (1 - alpha) * ce
    got = D.distillation_loss(s, t, y, temperature=T, alpha=alpha)
    assert got.dim() == 0 and got.item() == pytest.approx(expected.item(), rel=1e-5)
    # alpha = 0 is ordinary training: exactly the model's cross-entropy
    assert D.distillation_loss(s, t, y, T, 0.0).item() == pytest.approx(F.cross_entropy(s.reshape(-1, V), y.reshape(-1)).item())


def test_t_squared_keeps_the_soft_gradient_scale_at_high_temperature():
    """Hinton et al.: d(T²·KL)/dz_s → (z_s − z_t)/V per position (zero-mean logits) as T grows;
    without T² the gradient would shrink like 1/T²."""
    t = logits(64, V, seed=6)
    t = t - t.mean(-1, keepdim=True)
    s = logits(64, V, seed=7).requires_grad_()
    limit = ((s.detach() - s.detach().mean(-1, keepdim=True)) - t) / V / 64     # mean over 64 positions
    grads = {}
    for T in (1.0, 8.0, 64.0):
        s.grad = None
        D.distillation_loss(s, t, torch.zeros(64, dtype=torch.long), T, 1.0).backward()
        grads[T] = s.grad.clone()
    rel = {T: ((g - limit).norm() / limit.norm()).item() for T, g in grads.items()}
    assert rel[64.0] < 0.03 and rel[1.0] > 0.3                       # the limit holds only for large T
    norms = [grads[T].norm().item() for T in (1.0, 8.0, 64.0)]
    assert max(norms) / min(norms) < 1.2                              # without T² these would differ by 64²


def test_top_k_with_all_tokens_is_the_full_loss_and_fewer_tokens_keep_the_rest_as_one_outcome():
    s, t = logits(2, 6, V, seed=8), logits(2, 6, V, seed=9)
    y = torch.randint(0, V, (2, 6))
    full = D.distillation_loss(s, t, y, 2.0, 0.7)
    everything = D.TopK.from_logits(t, V, 2.0)
    assert bool(torch.isinf(everything.log_rest).all())
    assert D.distillation_loss(s, everything, y, 2.0, 0.7).item() == pytest.approx(full.item(), rel=1e-6)
    k = 3
    p, q = torch.softmax(t / 2.0, -1), torch.softmax(s / 2.0, -1)            # the coarse-grained KL, by hand:
    top = p.topk(k, -1).indices                                                # k tokens + "everything else"
    p_k, q_k = p.gather(-1, top), q.gather(-1, top)
    p_rest, q_rest = 1 - p_k.sum(-1), 1 - q_k.sum(-1)
    kl = ((p_k * (p_k / q_k).log()).sum(-1) + p_rest * (p_rest / q_rest).log()).mean()
    ce = F.cross_entropy(s.reshape(-1, V), y.reshape(-1))
    got = D.distillation_loss(s, D.TopK.from_logits(t, k, 2.0), y, 2.0, 0.7)
    assert got.item() == pytest.approx((0.7 * 4 * kl + 0.3 * ce).item(), rel=1e-6)
    assert 0 < kl < kl_divergence(Categorical(probs=p), Categorical(probs=q)).mean()   # a lower bound on the full KL
    with pytest.raises(SLMLabError, match="temperature 2.0, not 4.0"):
        D.distillation_loss(s, D.TopK.from_logits(t, k, 2.0), y, 4.0, 0.7)


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=0.0), "temperature"), (dict(alpha=1.5), "alpha"),
])
def test_bad_loss_arguments_are_one_sentence(kwargs, match):
    s = logits(2, 3, V)
    with pytest.raises(SLMLabError, match=match):
        D.distillation_loss(s, s, torch.zeros(2, 3, dtype=torch.long), **kwargs)
    with pytest.raises(SLMLabError, match="same tokenizer"):
        D.distillation_loss(s, logits(2, 3, V + 1), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(SLMLabError, match="same positions"):
        D.distillation_loss(s, s[:, :2], torch.zeros(2, 3, dtype=torch.long))


# -------------------------------------------------------------- the training loop ----
def test_alpha_zero_reproduces_slm_lab_train_exactly():
    d = data()
    a, b = tiny(), tiny()
    ha = train(a, d, d, cfg(), progress=False)
    hb = D.distill(b, None, d, d, cfg(), alpha=0.0, progress=False)
    assert ha.train_loss == pytest.approx(hb.train_loss, rel=1e-6) and ha.val_loss == pytest.approx(hb.val_loss, rel=1e-6)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)


def test_the_teacher_is_not_trained_and_pure_distillation_teaches_the_student():
    d = data()
    teacher = tiny(seed=1, d_model=32)
    train(teacher, d, d, cfg(max_steps=150, lr=1e-2), progress=False)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = tiny(seed=2)
    h = D.distill(student, teacher, d, d, cfg(max_steps=150, lr=1e-2), temperature=1.0, alpha=1.0, progress=False)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    # no hard labels at all, yet the student learns the sequence from the teacher's distribution alone
    assert h.val_loss[-1] < 0.5 * math.log(V)
    assert h.val_loss[-1] < h.val_loss[0]


def test_teacher_cache_holds_the_teachers_top_k_for_the_students_batches():
    from slm_lab.data import get_batch, step_generator

    d, teacher, c = data(), tiny(seed=1), cfg(max_steps=5, grad_accum=2)
    cache = D.cache_teacher(teacher, d, c, k=4, temperature=3.0, progress=False)
    assert cache.log_probs.shape == (5, 2, 4, 16, 4) and cache.nbytes == 5 * 2 * 4 * 16 * (4 * (2 + 2) + 4)
    x, _ = get_batch(d, 4, 16, step_generator(c.seed, 3, 1))
    with torch.no_grad():
        p = torch.softmax(teacher.eval()(x).logits / 3.0, -1)
    top = p.topk(4, dim=-1)
    got = cache.get(3, 1)
    assert got.temperature == 3.0 and torch.equal(got.indices.long(), top.indices)
    torch.testing.assert_close(got.log_probs.float().exp(), top.values, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(got.log_rest.exp(), 1 - top.values.sum(-1), atol=1e-5, rtol=1e-4)


def test_distilling_from_a_full_cache_matches_distilling_online():
    d, teacher = data(), tiny(seed=1)
    a, b = tiny(seed=2), tiny(seed=2)
    online = D.distill(a, teacher, d, d, cfg(), 2.0, 0.5, progress=False)
    cache = D.cache_teacher(teacher, d, cfg(), k=V, temperature=2.0, progress=False)
    cached = D.distill(b, None, d, d, cfg(), 2.0, 0.5, teacher_cache=cache, progress=False)
    assert cached.val_loss == pytest.approx(online.val_loss, rel=1e-3)


def test_bad_distillation_setups_say_what_to_do():
    d = data()
    with pytest.raises(SLMLabError, match="needs a teacher"):
        D.distill(tiny(), None, d, d, cfg(), alpha=0.5, progress=False)
    with pytest.raises(SLMLabError, match="share a tokenizer"):
        D.distill(tiny(), tiny(vocab_size=V + 1), d, d, cfg(), progress=False)
    with pytest.raises(SLMLabError, match="reads at most 8"):
        D.distill(tiny(), tiny(block_size=8), d, d, cfg(), progress=False)
    cache = D.cache_teacher(tiny(), d, cfg(max_steps=2), k=2, progress=False)
    with pytest.raises(SLMLabError, match="rebuild it"):
        D.distill(tiny(), None, d, d, cfg(max_steps=2, seed=4), teacher_cache=cache, progress=False)
    with pytest.raises(SLMLabError, match="T = 2.0; this run uses seed 3, 16 and T = 4.0"):
        D.distill(tiny(), None, d, d, cfg(max_steps=2), temperature=4.0, teacher_cache=cache, progress=False)
    with pytest.raises(SLMLabError, match="covers 2 steps"):
        D.distill(tiny(), None, d, d, cfg(max_steps=3), teacher_cache=cache, progress=False)


# ------------------------------------------------------------- the cached student ----
def test_distilled_student_is_cached_and_redone_when_the_teacher_changes(tmp_cache, monkeypatch):
    import slm_lab.train as T

    tok, train_ids, val_ids = T.prepare_char_data("shakespeare")
    teacher_dir = tmp_cache / "teacher"
    torch.manual_seed(0)
    teacher = SLM(SLMConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2, d_model=32))
    save_checkpoint(teacher_dir, teacher, tok)
    monkeypatch.setattr(T, "pretrained", lambda *a, **k: load_checkpoint(teacher_dir))
    monkeypatch.setattr(D, "STUDENT_MODEL", dict(family="llama", n_layer=1, n_head=2, d_model=16, block_size=64))
    calls = []
    real = D.distill
    monkeypatch.setattr(D, "distill", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = D.distilled_student(progress=False)
    assert first.path == D.distilled_path() and first.meta["teacher_fingerprint"] == D.fingerprint(teacher_dir)
    assert first.model.num_parameters() < teacher.num_parameters() and first.tokenizer.chars == tok.chars
    again = D.distilled_student(progress=False)
    assert len(calls) == 1 and all(torch.equal(a, b) for a, b in zip(first.model.parameters(), again.model.parameters()))
    with torch.no_grad():
        teacher.tok_emb.weight.mul_(1.5)
    save_checkpoint(teacher_dir, teacher, tok)                        # a retrained teacher …
    D.distilled_student(progress=False)
    assert len(calls) == 2                                            # … gets its own student
    monkeypatch.setattr(D, "ALPHA", 0.7)                              # so does a new recipe
    assert D.distilled_student(progress=False).meta["alpha"] == 0.7 and len(calls) == 3
    D.distilled_student(progress=False)
    assert len(calls) == 3
