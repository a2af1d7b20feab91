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
    from slm_lab.data import get_batch, step_generator
    d = data()
    xs = [get_batch(d, 4, 16, step_generator(cfg_acc.seed, 0, m)) for m in range(2)]
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


RESUME_CFG = dict(max_steps=30, batch_size=4, lr=3e-3, warmup_steps=3, eval_interval=10, eval_batches=2)


def _stopping_at(step_to_stop: int, how: str):
    """A loss function that is the model's cross-entropy, but at one step presses Ctrl-C or crashes."""
    import signal

    def loss_fn(model, x, y, step, micro):
        if step == step_to_stop:
            if how == "ctrl-c":
                signal.raise_signal(signal.SIGINT)       # as a user would, in the middle of the step
            else:
                raise RuntimeError("the machine went away")
        return model(x, y).loss
    return loss_fn


def _same_run(a, b):
    assert a.steps == b.steps == list(range(RESUME_CFG["max_steps"]))
    assert a.train_loss == b.train_loss and a.lr == b.lr                 # bit for bit, not approximately
    assert a.val_steps == b.val_steps and a.val_loss == b.val_loss


def test_ctrl_c_saves_and_the_resumed_run_is_bit_exact(tmp_path, capsys):
    cfg, d = TrainConfig(**RESUME_CFG, save_interval=0), data()
    straight_model = tiny_model(seed=5)
    straight = train(straight_model, d, d, cfg, progress=False, loss_fn=_stopping_at(-1, ""))
    with pytest.raises(KeyboardInterrupt):
        train(tiny_model(seed=5), d, d, cfg, out_dir=tmp_path, progress=False, loss_fn=_stopping_at(12, "ctrl-c"))
    said = capsys.readouterr().out
    assert "interrupted after step 13 of 30" in said and "--resume" in said
    assert load_checkpoint(tmp_path).meta["steps"] == 13 and not load_checkpoint(tmp_path).meta["complete"]
    model = tiny_model(seed=99)                        # other weights: everything must come from the checkpoint
    resumed = train(model, d, d, cfg, out_dir=tmp_path, resume=True, progress=False)
    _same_run(resumed, straight)
    for p, q in zip(model.parameters(), straight_model.parameters()):
        assert torch.equal(p, q)
    assert load_checkpoint(tmp_path).meta["complete"]


def test_a_crash_resumes_from_the_last_periodic_checkpoint(tmp_path):
    cfg, d = TrainConfig(**RESUME_CFG, save_interval=5), data()
    straight = train(tiny_model(seed=5), d, d, cfg, progress=False)
    with pytest.raises(RuntimeError):
        train(tiny_model(seed=5), d, d, cfg, out_dir=tmp_path, progress=False, loss_fn=_stopping_at(13, "crash"))
    assert load_checkpoint(tmp_path).meta["steps"] == 10           # the checkpoint of step 10 survived
    _same_run(train(tiny_model(seed=1), d, d, cfg, out_dir=tmp_path, resume=True, progress=False), straight)


def test_resume_refuses_another_recipe_and_a_missing_run(tmp_path):
    cfg, d = TrainConfig(**RESUME_CFG, save_interval=5), data()
    with pytest.raises(RuntimeError):
        train(tiny_model(), d, d, cfg, out_dir=tmp_path, progress=False, loss_fn=_stopping_at(6, "crash"))
    with pytest.raises(SLMLabError, match=r"trained with lr=0.003 \(now 0.01\)"):
        train(tiny_model(), d, d, TrainConfig(**{**RESUME_CFG, "lr": 1e-2}), out_dir=tmp_path, resume=True,
              progress=False)
    with pytest.raises(SLMLabError, match="no trainer_state.pt"):
        train(tiny_model(), d, d, cfg, out_dir=tmp_path / "other", resume=True, progress=False)


def test_trainer_state_is_loaded_without_running_pickled_code(tmp_path):
    from slm_lab.checkpoint import load_trainer_state

    marker = tmp_path / "pwned"

    class Planted:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))
    torch.save({"step": 3, "evil": Planted()}, tmp_path / "trainer_state.pt")
    with pytest.raises(SLMLabError, match="trainer_state.pt cannot be read"):
        load_trainer_state(tmp_path)
    assert not marker.exists()


def test_train_honours_the_device_setting(monkeypatch):
    model, moved = tiny_model(), []
    real_to = model.to
    monkeypatch.setattr(model, "to", lambda *a, **k: moved.append(a[0] if a else k.get("device")) or real_to(*a, **k))
    monkeypatch.setenv("SLM_LAB_DEVICE", "cpu")
    d = data()
    train(model, d, d, TrainConfig(max_steps=1, batch_size=2, eval_batches=1), progress=False)
    assert moved == [torch.device("cpu")]
    for bad, words in (("gpu", "is not a device name"), ("cuda", "CUDA is not available")):
        monkeypatch.setenv("SLM_LAB_DEVICE", bad)
        if bad == "cuda" and torch.cuda.is_available():
            continue
        with pytest.raises(SLMLabError, match=words):
            train(tiny_model(), d, d, TrainConfig(max_steps=1, batch_size=2, eval_batches=1), progress=False)


def test_a_device_error_shows_as_one_line_in_a_notebook():
    from slm_lab.settings import device

    with pytest.raises(SLMLabError) as info:
        device("gpu")
    lines = info.value._render_traceback_()              # what IPython prints instead of a traceback
    assert len(lines) == 1 and "'gpu' is not a device name" in lines[0]


def test_out_dir_is_checked_before_training(tmp_path):
    from slm_lab.checkpoint import check_out_dir

    (tmp_path / "file").write_text("x")
    with pytest.raises(SLMLabError, match="is an existing file"):
        check_out_dir(tmp_path / "file")
    with pytest.raises(SLMLabError, match="cannot write to --out"):
        check_out_dir("/proc/slm-lab-run")                # not creatable, even as root
    save_checkpoint(tmp_path / "run", tiny_model())
    with pytest.raises(SLMLabError, match="already holds a checkpoint"):
        check_out_dir(tmp_path / "run")
    assert check_out_dir(tmp_path / "run", overwrite=True) == tmp_path / "run"
    assert check_out_dir(tmp_path / "new" / "deeper").is_dir()
    assert not list((tmp_path / "new" / "deeper").iterdir())   # the write test leaves nothing behind


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
