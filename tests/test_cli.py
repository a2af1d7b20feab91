"""The `slm-lab` command: bad input is one line on stderr and a non-zero exit, never a traceback."""
import subprocess
import sys

import pytest

from slm_lab.checkpoint import save_checkpoint
from slm_lab.errors import SLMLabError
from slm_lab.model import SLM, SLMConfig
from slm_lab.tokenizer import CharTokenizer


def slm_lab(*args, env_extra=None):
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "slm_lab.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    tok = CharTokenizer("abc \n")
    save_checkpoint(path, SLM(SLMConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, d_model=8)), tok)
    return path


def one_line_error(res, words):
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr and words in lines[0], lines[0]


def test_generate_from_a_checkpoint(ckpt):
    res = slm_lab("generate", "--ckpt", str(ckpt), "--prompt", "ab", "--tokens", "10")
    assert res.returncode == 0, res.stderr
    text = res.stdout.rstrip("\n")
    assert text.startswith("ab") and len(text) == 12 and set(text) <= set("abc \n")


def test_missing_checkpoint(tmp_path):
    one_line_error(slm_lab("generate", "--ckpt", str(tmp_path / "nope"), "--prompt", "a"), "no checkpoint directory")


def test_export_is_a_command_and_its_errors_are_one_line(ckpt, tmp_path):
    one_line_error(slm_lab("export", "--ckpt", str(tmp_path / "nope"), "--out", str(tmp_path / "o")),
                   "no checkpoint directory")
    one_line_error(slm_lab("export", "--ckpt", str(ckpt), "--format", "tflite", "--out", str(tmp_path / "o")),
                   "format 'tflite' is not supported")
    assert not (tmp_path / "o").exists()


def test_prompt_outside_the_char_vocabulary(ckpt):
    one_line_error(slm_lab("generate", "--ckpt", str(ckpt), "--prompt", "abz"),
                   "character 'z' (U+007A) is not in this tokenizer's vocabulary")


def test_unknown_preset():
    one_line_error(slm_lab("train", "--preset", "huge"), "unknown preset 'huge'")


def test_bad_profile_name():
    one_line_error(slm_lab("train", "--preset", "tiny", env_extra={"SLM_LAB_PROFILE": "fast"}),
                   "SLM_LAB_PROFILE='fast' is not a profile")


def test_train_smoke_trains_samples_and_saves(tmp_path):
    res = slm_lab("train", "--preset", "tiny", "--out", str(tmp_path / "run"), env_extra={"SLM_LAB_PROFILE": "smoke"})
    assert res.returncode == 0, res.stderr
    assert "val loss" in res.stdout and "--- sample ---" in res.stdout
    assert (tmp_path / "run" / "model.safetensors").is_file() and (tmp_path / "run" / "tokenizer.json").is_file()
    gen = slm_lab("generate", "--ckpt", str(tmp_path / "run"), "--prompt", "ROMEO:", "--tokens", "20")
    assert gen.returncode == 0 and gen.stdout.startswith("ROMEO:")


def test_doctor_reports_each_item():
    res = slm_lab("doctor")
    assert res.returncode == 0, res.stdout + res.stderr
    for name in ("python", "torch", "device", "threads", "offline corpus", "triton", "onnxruntime", "peft"):
        assert any(line.split()[1:2] == [name.split()[0]] or name in line for line in res.stdout.splitlines()), name
    assert "Ready for the course." in res.stdout


def test_doctor_fails_when_the_corpus_is_missing_or_damaged(monkeypatch, capsys):
    from slm_lab import data
    from slm_lab.course import doctor

    for attr, value, words in (("SHAKESPEARE_FILE", "corpora/nowhere.txt.xz", "is missing or damaged"),
                               ("SHAKESPEARE_SHA256", "0" * 64, "does not match its checksum")):
        with monkeypatch.context() as m:
            m.setattr(data, attr, value)
            with pytest.raises(SLMLabError, match=words):
                data.load_corpus("shakespeare")
            assert doctor.run() == 1
            out = capsys.readouterr().out
            line = next(x for x in out.splitlines() if "offline corpus" in x)
            assert line.startswith("MISSING") and "reinstall the course package" in line


def test_the_corpus_ships_with_the_package():
    from slm_lab.data import load_corpus

    text = load_corpus("shakespeare")
    assert len(text) > 5_000_000 and "To be, or not to be" in text and "\r" not in text


def test_doctor_is_not_ready_under_a_bad_profile_or_device():
    res = slm_lab("doctor", env_extra={"SLM_LAB_PROFILE": "bogus", "SLM_LAB_DEVICE": "gpu"})
    assert res.returncode == 1 and "Ready for the course." not in res.stdout
    lines = res.stdout.splitlines()
    assert any(x.startswith("INVALID") and "SLM_LAB_PROFILE='bogus'" in x for x in lines), res.stdout
    assert any(x.startswith("INVALID") and "SLM_LAB_DEVICE='gpu'" in x for x in lines), res.stdout


@pytest.mark.parametrize("args, words", [
    (["train", "--steps", "0"], "--steps 0 must be a positive whole number"),
    (["train", "--steps", "-5"], "--steps -5 must be a positive whole number"),
    (["train", "--threads", "-1"], "--threads -1 must be a positive whole number"),
    (["train", "--threads", "0"], "--threads 0 must be a positive whole number"),
    (["train", "--resume"], "--resume needs --out"),
    (["train", "--device", "gpu"], "device 'gpu' is not a device name"),
    (["generate", "--ckpt", "CKPT", "--tokens", "0"], "--tokens 0 must be a positive whole number"),
    (["generate", "--ckpt", "CKPT", "--tokens", "-3"], "--tokens -3 must be a positive whole number"),
    (["generate", "--ckpt", "CKPT", "--top-k", "0"], "--top-k 0 must be a positive whole number"),
    (["generate", "--ckpt", "CKPT", "--top-p", "1.5"], "--top-p 1.5 must be in (0, 1]"),
    (["generate", "--ckpt", "CKPT", "--temperature", "-1"], "--temperature -1.0 must be ≥ 0"),
])
def test_bad_numbers_are_refused_in_one_line(ckpt, args, words):
    one_line_error(slm_lab(*[str(ckpt) if a == "CKPT" else a for a in args]), words)


def test_bad_device_from_the_environment_is_one_line():
    one_line_error(slm_lab("train", env_extra={"SLM_LAB_DEVICE": "gpu", "SLM_LAB_PROFILE": "smoke"}),
                   "SLM_LAB_DEVICE='gpu' is not a device name")


def test_an_unusable_out_is_refused_before_training(tmp_path, ckpt):
    (tmp_path / "file").write_text("x")
    for out, words in (("/sys/slm-lab-run", "cannot write to --out"), (str(tmp_path / "file"), "is an existing file"),
                       (str(ckpt), "already holds a checkpoint")):
        res = slm_lab("train", "--preset", "tiny", "--out", out, env_extra={"SLM_LAB_PROFILE": "smoke"})
        one_line_error(res, words)
        assert "val loss" not in res.stdout and "training" not in res.stdout      # refused before any step


def test_explicit_steps_win_over_the_smoke_profile_and_a_run_resumes(tmp_path):
    env = {"SLM_LAB_PROFILE": "smoke"}
    res = slm_lab("train", "--preset", "tiny", "--steps", "3", "--out", str(tmp_path / "run"), env_extra=env)
    assert res.returncode == 0, res.stderr
    assert "trains 3 steps, as asked (the smoke profile alone trains 20)" in res.stdout
    assert "after 3 steps" in res.stdout
    again = slm_lab("train", "--out", str(tmp_path / "run"), "--resume", env_extra=env)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stdout and "after 3 steps" in again.stdout      # finished: nothing left to train
    other = slm_lab("train", "--preset", "small", "--out", str(tmp_path / "run"), "--resume", env_extra=env)
    one_line_error(other, "is a run of --preset tiny, not small")


def test_course_tools_without_the_course_extra_name_the_extra(tmp_path):
    import os

    (tmp_path / "nbformat").mkdir()           # an install without the `course` extra: nbformat is absent
    (tmp_path / "nbformat" / "__init__.py").write_text("raise ImportError('No module named nbformat', name='nbformat')")
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for command in ("grade", "make-labs"):
        one_line_error(slm_lab(command, "--help", env_extra=env), 'pip install "slm_lab[course]"')


def test_doctor_reports_the_grading_sandbox(monkeypatch):
    from slm_lab.course import doctor, sandbox

    monkeypatch.setattr(sandbox, "unavailable", lambda: "bwrap is not installed, so submissions cannot be sandboxed; "
                                                      + sandbox.INSTALL_HINT)
    item = next(i for i in doctor.checks() if i.name == "grading sandbox")
    assert not item.ok and not item.required and "bwrap is not installed" in item.line()
    assert "apt-get install bubblewrap" in item.line()
    monkeypatch.setattr(sandbox, "unavailable", lambda: None)
    item = next(i for i in doctor.checks() if i.name == "grading sandbox")
    assert item.ok and "uid 65534" in item.line()
