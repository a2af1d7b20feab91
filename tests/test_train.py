"""Training: schedule, optimizer groups, checkpoints that reload exactly, resume that continues exactly."""
import math

import pytest
import torch

from slm_lab.checkpoint import load_checkpoint, save_checkpoint
from slm_lab.errors import SLMLabError
from slm_lab.model import SLM, SLMConfig
from slm_lab.tokenizer import CharTokenizer
from slm_lab.train import TrainConfig, lr_at, make_optimizer, train


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return SLM(SLMConfig(**{**dict(vocab_size=20, block_size=16, n_layer=2, n_head=2, d_model=16), **kw}))


def data(n=5000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 20, (n,), generator=g)


def test_warmup_then_cosine_schedule():
    cfg = TrainConfig(max_steps=110, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(1e-4 + 0.5 * 9e-4)       # half-way through the cosine
    assert lr_at(110, cfg) == pytest.approx(1e-4)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 110))


def test_no_weight_decay_on_norms_and_biases():
    model = tiny_model(family="gpt2")
    opt = make_optimizer(model, TrainConfig(weight_decay=0.1))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.dim() >= 2), name


def test_training_lowers_the_loss_and_records_history():
    model = tiny_model()
    # A learnable sequence: token t+1 = token t + 1 (mod 20).
    seq = torch.arange(4000) % 20
    hist = train(model, seq, seq, TrainConfig(max_steps=60, batch_size=8, lr=1e-2, min_lr=1e-3, warmup_steps=5,
                                              eval_interval=20, eval_batches=2), progress=False)
    assert len(hist.train_loss) == 60 and hist.val_steps == [20, 40, 60]
    assert hist.val_loss[-1] < 0.5 * math.log(20)


def test_gradient_accumulation_matches_one_big_batch():
    cfg_big = TrainConfig(max_steps=1, batch_size=8, grad_accum=1, eval_interval=1, eval_batches=1, grad_clip=0)
    cfg_acc = TrainConfig(max_steps=1, batch_size=4, grad_accum=2, eval_interval=1, eval_batches=1, grad_clip=0)
    # Same tokens: build the big batch from the two micro-batches the accumulating run draws.
    from slm_lab.train import _batch_generator
    from slm_lab.data import get_batch
    d = data()
    xs = [get_batch(d, 4, 16, _batch_generator(cfg_acc, 0, m)) for m in range(2)]
    x, y = torch.cat([a for a, _ in xs]), torch.cat([b for _, b in xs])
    a, b = tiny_model(), tiny_model()
    a(x, y).loss.backward()
    for micro in xs:
        (b(*micro).loss / 2).backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6)


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    for kw in (dict(family="llama", n_kv_head=1), dict(family="gpt2", tie_weights=False)):
        model = tiny_model(**kw)
        tok = CharTokenizer("abcdefghijklmnopqrst")
        save_checkpoint(tmp_path / kw["family"], model, tok, meta={"note": "x"})
        ck = load_checkpoint(tmp_path / kw["family"])
        x = torch.randint(0, 20, (2, 16))
        assert torch.equal(model.eval()(x).logits, ck.model(x).logits)
        assert ck.tokenizer.chars == tok.chars and ck.meta["note"] == "x"
        assert not list((tmp_path / kw["family"]).glob("*.tmp"))


def test_resumed_run_continues_the_same_loss_curve(tmp_path):
    cfg = TrainConfig(max_steps=30, batch_size=4, lr=3e-3, warmup_steps=3, eval_interval=10, eval_batches=2)
    d = data()
    straight = train(tiny_model(seed=5), d, d, cfg, progress=False)
    half = TrainConfig(**{**cfg.__dict__, "max_steps": 15})
    first = tiny_model(seed=5)
    # The first half must run under the full schedule's learning rates to be the same run.
    half.decay_steps = cfg.max_steps
    train(first, d, d, half, out_dir=tmp_path, progress=False)
    resumed = train(tiny_model(seed=99), d, d, TrainConfig(**{**cfg.__dict__, "decay_steps": cfg.max_steps}),
                    out_dir=tmp_path, resume=True, progress=False)
    assert resumed.steps == list(range(30))
    torch.testing.assert_close(torch.tensor(resumed.train_loss), torch.tensor(straight.train_loss),
                               rtol=1e-5, atol=1e-6)
    assert resumed.val_loss[-1] == pytest.approx(straight.val_loss[-1], rel=1e-5)


def test_missing_or_broken_checkpoint_is_one_clear_error(tmp_path):
    with pytest.raises(SLMLabError, match="no checkpoint directory at .*slm-lab train"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(SLMLabError, match="model.safetensors is missing"):
        load_checkpoint(tmp_path / "half")
    save_checkpoint(tmp_path / "trunc", tiny_model())
    f = tmp_path / "trunc" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(SLMLabError, match="corrupt"):
        load_checkpoint(tmp_path / "trunc")


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = tiny_model()
    save_checkpoint(tmp_path, model)
    before = (tmp_path / "model.safetensors").read_bytes()
    import slm_lab.checkpoint as ckmod

    def boom(state, path):
        open(path, "wb").write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(ckmod, "save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, tiny_model(seed=1))
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))


def test_pretrained_caches_and_retrains_when_the_recipe_changes(tmp_cache, monkeypatch):
    from slm_lab import train as T

    calls = []
    real = T.train_preset
    monkeypatch.setattr(T, "train_preset", lambda *a, **k: calls.append(1) or real(*a, progress=False, **{
        kk: v for kk, v in k.items() if kk != "progress"}))
    first = T.pretrained("tiny", progress=False)
    again = T.pretrained("tiny", progress=False)
    assert len(calls) == 1                                       # the second call came from the cache
    x = torch.randint(0, first.model.cfg.vocab_size, (1, 8))
    assert torch.equal(first.model(x).logits, again.model(x).logits)
    monkeypatch.setitem(T.PRESETS, "tiny", T.Preset(model={**T.PRESETS["tiny"].model, "d_model": 64},
                                                    train=T.PRESETS["tiny"].train))
    changed = T.pretrained("tiny", progress=False)
    assert len(calls) == 2 and changed.model.cfg.d_model == 64  # a changed recipe is not served stale
