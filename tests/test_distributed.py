"""Data-parallel training, tested on the CPU with torchrun and gloo: 2 processes × batch B follow the same loss
curve, to float tolerance, as one process accumulating 2 micro-batches of B and as one process on the 2B
batch made of the same sequences; bad launches get one line each."""
import os
import subprocess
import sys

import pytest
import torch

from slm_lab import distributed
from slm_lab.checkpoint import load_checkpoint, load_trainer_state
from slm_lab.data import get_batch, step_generator
from slm_lab.errors import SLMLabError
from slm_lab.model import SLM
from slm_lab.settings import seed_everything
from slm_lab.train import get_preset, prepare_char_data, preset_train_config, train, train_preset

STEPS = 6


def slm_lab_train(*args, env=None, timeout=240):
    return subprocess.run([sys.executable, "-m", "slm_lab.cli", "train", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "SLM_LAB_PROFILE": "smoke", **(env or {})})


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """`slm-lab train --nproc 2` for STEPS steps of the tiny preset: rank 0's history and checkpoint."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    done = slm_lab_train("--nproc", "2", "--preset", "tiny", "--steps", str(STEPS), "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "× 2 processes" in done.stdout and done.stdout.count("--- sample ---") == 1   # rank 0 alone reports
    return load_trainer_state(out)["history"], load_checkpoint(out).model, done.stdout


def test_two_processes_equal_one_process_accumulating_two_micro_batches(two_process_run, monkeypatch):
    monkeypatch.setenv("SLM_LAB_PROFILE", "smoke")
    history, ddp_model, _ = two_process_run
    model, _, ref = train_preset("tiny", progress=False, device="cpu", max_steps=STEPS, grad_accum=2)
    assert len(history["train_loss"]) == STEPS
    torch.testing.assert_close(torch.tensor(history["train_loss"]), torch.tensor(ref.train_loss), rtol=1e-4, atol=1e-6)
    for (name, a), b in zip(ddp_model.state_dict().items(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    assert history["tokens_per_step"] == ref.tokens_per_step                 # both count 2 × B × block per step


def test_two_processes_equal_one_process_on_the_doubled_batch(two_process_run, monkeypatch):
    """The 2B batch is rank 0's and rank 1's micro-batches side by side: one mean over 2B sequences."""
    monkeypatch.setenv("SLM_LAB_PROFILE", "smoke")
    history, _, _ = two_process_run
    cfg = preset_train_config("tiny", max_steps=STEPS)
    tok, train_ids, val_ids = prepare_char_data()
    block = get_preset("tiny").model["block_size"]

    def doubled_batch_loss(model, x, y, step, micro):
        xs, ys = zip(*(get_batch(train_ids, cfg.batch_size, block, step_generator(cfg.seed, step, r)) for r in (0, 1)),
                     strict=True)
        return model(torch.cat(xs), torch.cat(ys)).loss

    seed_everything(cfg.seed)
    model = SLM(get_preset("tiny").model_config(tok.vocab_size))
    ref = train(model, train_ids, val_ids, cfg, progress=False, device="cpu", loss_fn=doubled_batch_loss)
    torch.testing.assert_close(torch.tensor(history["train_loss"]), torch.tensor(ref.train_loss), rtol=1e-4, atol=1e-6)
    # and it is not the curve of one process on batch B alone (the test can tell the runs apart)
    alone = train_preset("tiny", progress=False, device="cpu", max_steps=STEPS)[2]
    assert max(abs(a - b) for a, b in zip(history["train_loss"][1:], alone.train_loss[1:], strict=True)) > 1e-3


def test_bad_launches_get_one_line(tmp_path):
    too_many = slm_lab_train("--nproc", str((os.cpu_count() or 1) + 1), "--steps", "2")
    assert too_many.returncode == 2 and "CPU cores here" in too_many.stderr and len(too_many.stderr.splitlines()) == 1
    no_rendezvous = slm_lab_train("--steps", "2", env={"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": ""})
    assert no_rendezvous.returncode == 2 and "MASTER_ADDR" in no_rendezvous.stderr
    assert len(no_rendezvous.stderr.splitlines()) == 1
    with pytest.raises(SLMLabError, match="at least 1"):
        distributed.check_nproc(0)


def test_torchrun_command_runs_the_training_module_on_one_machine():
    cmd = distributed.torchrun_command(2, ["--preset", "tiny"])
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and "--nproc-per-node=2" in cmd and "--standalone" in cmd
    assert cmd[-4:] == ["-m", "slm_lab.train", "--preset", "tiny"]
