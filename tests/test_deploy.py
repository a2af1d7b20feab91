"""Deployment: ONNX export parity with a KV cache, greedy tokens equal PyTorch's, sampling rules, int8/int4
accuracy and size, the measurement worker, and `slm-lab export` (onnx_export, onnx_runtime, onnx_quantize, measure)."""
import argparse
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from slm_lab import measure, onnx_runtime
from slm_lab.checkpoint import save_checkpoint
from slm_lab.errors import SLMLabError
from slm_lab.model import SLM, SLMConfig, sample_next
from slm_lab.data import encode_corpus, load_corpus
from slm_lab.evaluate import fixed_batches, mean_loss
from slm_lab.tokenizer import CharTokenizer
from slm_lab.train import TrainConfig, train

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
from slm_lab import onnx_export  # noqa: E402
from slm_lab.course import export_cmd  # noqa: E402
from slm_lab.onnx_export import export_onnx, max_logit_difference  # noqa: E402
from slm_lab.onnx_quantize import quantize_int4, quantize_int8  # noqa: E402
from checking import sharp  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A Llama-family model with grouped-query attention, trained briefly on Shakespeare (~10 s on one
    thread) so that its predictions and its weights look like a real model's; weights dominate its file."""
    torch.set_num_threads(int(os.environ.get("SLM_LAB_TEST_THREADS", "2")))   # module fixtures run before conftest's
    text = load_corpus("shakespeare")[:300_000]
    tok = CharTokenizer(text)
    data = encode_corpus(text, tok)
    torch.manual_seed(0)
    model = SLM(SLMConfig(family="llama", vocab_size=tok.vocab_size, block_size=40, n_layer=2, n_head=4,
                          n_kv_head=2, d_model=128))
    train(model, data[:270_000], data[270_000:], TrainConfig(max_steps=150, batch_size=16, lr=3e-3, warmup_steps=10,
                                                             eval_interval=150, eval_batches=1), progress=False)
    model.eval()
    folder = tmp_path_factory.mktemp("onnx")
    save_checkpoint(folder / "ckpt", model, tok)
    path = export_onnx(model, folder / "model.onnx")
    return model, tok, path, folder, data[270_000:]


def test_export_parity_prefill_and_decode(exported):
    model, _, path, _, _ = exported
    g = torch.Generator().manual_seed(0)
    for (B, T, P) in ((1, 9, 0), (3, 1, 17), (2, 5, 6), (1, 1, 39)):     # prefill, decode, chunk, last position
        ids = torch.randint(0, model.cfg.vocab_size, (B, T), generator=g)
        assert max_logit_difference(model, path, ids, P) < 1e-4, (B, T, P)


def test_graph_names_have_one_definition(exported):
    model, _, path, _, _ = exported
    session = onnx_runtime.load_session(path)
    n = model.cfg.n_layer
    assert [i.name for i in session.get_inputs()] == onnx_runtime.input_names(n)
    assert [o.name for o in session.get_outputs()] == onnx_runtime.output_names(n)
    assert onnx_runtime.input_names(1) == ["input_ids", "past_key_0", "past_value_0"]     # what the labs teach
    assert onnx_export.deploy_config(model)["inputs"] == onnx_runtime.input_names(n)


def test_runtime_quantize_and_measure_never_import_torch():
    code = ("import sys; import slm_lab.onnx_runtime, slm_lab.onnx_quantize, slm_lab.measure; "
            "print(sorted(m for m in ('torch', 'slm_lab.model', 'slm_lab.onnx_export') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_gpt2_family_exports_too(tmp_path):
    model = sharp(SLM(SLMConfig(family="gpt2", vocab_size=20, block_size=16, n_layer=1, n_head=2, d_model=16)))
    path = export_onnx(model, tmp_path / "gpt2.onnx")
    assert max_logit_difference(model, path, torch.randint(0, 20, (2, 4)), 5) < 1e-4
    assert max_logit_difference(model, path, torch.randint(0, 20, (1, 6)), 0) < 1e-4


def test_greedy_tokens_equal_pytorch_even_past_the_block(exported):
    model, _, path, _, _ = exported
    lm = onnx_runtime.OnnxLM(path)
    prompt = torch.randint(0, model.cfg.vocab_size, (2, 5), generator=torch.Generator().manual_seed(1))
    for n in (12, 60):                                    # 60 + 5 > block_size 40: sliding window
        ref = model.generate(prompt, n, temperature=0)
        assert np.array_equal(lm.generate(prompt.numpy(), n), ref.numpy())
    assert len(set(ref[0, 5:].tolist())) > 3             # a real sequence, not one repeated token


def test_filtering_matches_the_definitions():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 30)).astype(np.float32) * 2
    z = onnx_runtime.filter_logits(logits, temperature=0.7, top_k=5)
    for row, zrow in zip(logits, z):
        assert set(np.flatnonzero(np.isfinite(zrow))) == set(np.argsort(-row)[:5])
        np.testing.assert_allclose(zrow[np.isfinite(zrow)], row[np.isfinite(zrow)] / 0.7, rtol=1e-6)
    z = onnx_runtime.filter_logits(logits, temperature=1.0, top_p=0.6)
    for row, zrow in zip(logits, z):
        order = np.argsort(-row)
        p = np.exp(row[order] - row.max())
        p /= p.sum()
        n = int(np.searchsorted(np.cumsum(p), 0.6) + 1)     # smallest prefix reaching 0.6
        assert set(np.flatnonzero(np.isfinite(zrow))) == set(order[:n])


def test_sampling_follows_the_distribution_and_the_seed():
    logits = np.array([[2.0, 1.0, 0.0, -1.0, 0.5]], np.float32)
    rng = np.random.default_rng(0)
    draws = np.array([onnx_runtime.sample_next_numpy(logits, 0.8, rng=rng)[0, 0] for _ in range(20000)])
    p = torch.softmax(torch.tensor(logits[0]) / 0.8, -1).numpy()
    np.testing.assert_allclose(np.bincount(draws, minlength=5) / 20000, p, atol=0.015)
    # PyTorch's sampler agrees on the distribution (different generator, same law).
    torch_draws = sample_next(torch.tensor(logits).expand(20000, 5), 0.8, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(np.bincount(torch_draws[:, 0].numpy(), minlength=5) / 20000, p, atol=0.015)
    assert onnx_runtime.sample_next_numpy(logits, 1.0, top_k=1)[0, 0] == 0                # top-k 1 is greedy
    a = onnx_runtime.sample_next_numpy(np.tile(logits, (8, 1)), 1.0, rng=np.random.default_rng(5))
    b = onnx_runtime.sample_next_numpy(np.tile(logits, (8, 1)), 1.0, rng=np.random.default_rng(5))
    assert np.array_equal(a, b)


def test_sampled_generation_is_seeded(exported):
    _, _, path, _, _ = exported
    lm = onnx_runtime.OnnxLM(path)
    a = lm.generate([1, 2, 3], 20, temperature=0.9, top_k=10, seed=3)
    assert np.array_equal(a, lm.generate([1, 2, 3], 20, temperature=0.9, top_k=10, seed=3))
    assert not np.array_equal(a, lm.generate([1, 2, 3], 20, temperature=0.9, top_k=10, seed=4))


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """One layer with sharp random weights: the quickest checkpoint to export in the command's tests."""
    tok = CharTokenizer("First Citizen:\nBefore we proceed any further, hear me speak.\nAll:\nSpeak, speak.\n")
    model = sharp(SLM(SLMConfig(family="llama", vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2,
                                d_model=32)))
    return model, tok, save_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", model, tok)



def test_int8_and_int4_accuracy_and_size(exported):
    """Stated bounds: int8 val loss within 1% of fp32 and the same argmax at ≥ 95% of positions; int4 within 3%
    and ≥ 90%. The int8 file is ≤ 0.3× the fp32 file, the int4 file smaller still."""
    model, _, path, folder, val = exported
    q8 = quantize_int8(path, folder / "model.int8.onnx")
    q4 = quantize_int4(path, folder / "model.int4.onnx")
    batches = fixed_batches(val, 40, 8, 3, seed=0)
    ref = onnx_runtime.onnx_mean_loss(path, batches)
    assert abs(ref - mean_loss(model, batches)) < 1e-4                          # NumPy loss = PyTorch loss
    x = batches[0][0].numpy()
    ref_top = onnx_runtime.OnnxLM(path).forward(x)[0].argmax(-1)
    for q, tol, agree in ((q8, 0.01, 0.95), (q4, 0.03, 0.90)):
        assert abs(onnx_runtime.onnx_mean_loss(q, batches) - ref) <= tol * ref, q.name
        assert (onnx_runtime.OnnxLM(q).forward(x)[0].argmax(-1) == ref_top).mean() >= agree, q.name
    assert q8.stat().st_size <= 0.3 * path.stat().st_size
    assert q4.stat().st_size < q8.stat().st_size
    assert onnx_runtime.OnnxLM(q8).spec == onnx_runtime.OnnxLM(path).spec                # the config travels along


def test_int8_per_channel_is_the_default_and_per_tensor_is_one_scale(exported):
    """The default int8 export keeps one scale (and zero-point) per output channel, module 05's choice;
    per_channel=False one per matrix. Read from the graph: the integer matmuls' weight zero-points."""
    import onnx
    from onnx import numpy_helper

    _, _, path, folder, _ = exported

    def scale_sizes(q):
        """Weight zero-point sizes of the MatMulInteger nodes: one value per matrix or one per column."""
        g = onnx.load(str(q)).graph
        inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        return [inits[n.input[3]].size for n in g.node if n.op_type == "MatMulInteger" and n.input[1] in inits]

    pc = scale_sizes(quantize_int8(path, folder / "pc.int8.onnx"))
    pt = scale_sizes(quantize_int8(path, folder / "pt.int8.onnx", per_channel=False))
    assert pc and pt and len(pc) == len(pt)
    assert set(pt) == {1} and min(pc) > 1


def test_int4_zero_points_only_when_asymmetric(exported):
    import onnx

    _, _, path, folder, _ = exported

    def zero_point_inputs(q):
        nodes = [n for n in onnx.load(str(q)).graph.node if n.op_type == "MatMulNBits"]
        assert nodes, "no MatMulNBits node: the int4 quantizer did nothing"
        return {len(n.input) > 3 and bool(n.input[3]) for n in nodes}

    assert zero_point_inputs(quantize_int4(path, folder / "sym.int4.onnx")) == {False}
    assert zero_point_inputs(quantize_int4(path, folder / "asym.int4.onnx", symmetric=False)) == {True}


def test_runtime_errors_are_one_sentence(exported, tmp_path):
    _, _, path, _, _ = exported
    lm = onnx_runtime.OnnxLM(path)
    with pytest.raises(SLMLabError, match="exceed block_size=40"):
        lm.forward(np.zeros((1, 41), np.int64))
    with pytest.raises(SLMLabError, match="outside the vocabulary"):
        lm.forward(np.array([[999]]))
    with pytest.raises(SLMLabError, match="no ONNX model at"):
        onnx_runtime.load_session(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(SLMLabError, match="cannot load"):
        onnx_runtime.load_session(tmp_path / "bad.onnx")


def test_measurement_workers_agree_and_onnx_runs_without_torch(exported):
    model, _, path, folder, _ = exported
    prompt = [1, 5, 2, 7, 3]
    ort_row = measure.run_measurement("onnxruntime", path, prompt, new_tokens=8, repeats=2)
    torch_row = measure.run_measurement("pytorch", folder / "ckpt", prompt, new_tokens=8, repeats=2)
    ref = model.generate(torch.tensor([prompt]), 8, temperature=0)[0, 5:].tolist()
    assert ort_row["tokens"] == torch_row["tokens"] == ref
    assert ort_row["torch_imported"] is False and torch_row["torch_imported"] is True
    for row in (ort_row, torch_row):
        assert row["peak_rss_mib"] >= row["rss_after_import_mib"] > 0
        assert row["decode_tokens_per_s"] > 0 and row["prefill_ms"] > 0 and len(row["decode_s_runs"]) == 2


def export_args(**kw):
    parser = argparse.ArgumentParser()
    export_cmd.register(parser.add_subparsers())
    argv = ["export", "--ckpt", str(kw.pop("ckpt")), "--out", str(kw.pop("out"))]
    for k, v in kw.items():
        argv += [f"--{k}"] + ([] if v is True else [str(v)])
    return parser.parse_args(argv)


def test_export_command_writes_a_runnable_folder(tiny_ckpt, tmp_path, capsys):
    model, tok, ckpt = tiny_ckpt
    out = tmp_path / "out"
    assert export_cmd.run(export_args(ckpt=ckpt, out=out, int8=True)) == 0
    assert {p.name for p in out.iterdir()} == {"model.onnx", "model.int8.onnx", "deploy_config.json", "tokenizer.json"}
    assert "model.int8.onnx" in capsys.readouterr().out
    from slm_lab.tokenizer import load_tokenizer

    prompt = load_tokenizer(out / "tokenizer.json").encode("All:\n")
    assert tok.encode("All:\n") == prompt
    ref = model.generate(torch.tensor([prompt]), 15, temperature=0)[0].tolist()
    assert onnx_runtime.OnnxLM(out / "model.onnx").generate(prompt, 15)[0].tolist() == ref


def test_export_command_hf_format_loads_in_transformers(tiny_ckpt, tmp_path):
    from transformers import AutoModelForCausalLM

    model, _, ckpt = tiny_ckpt
    export_cmd.run(export_args(ckpt=ckpt, out=tmp_path / "hf", format="hf"))
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, model.cfg.vocab_size, (1, 10))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids).logits).abs().max() < 1e-4
    assert (tmp_path / "hf" / "tokenizer.json").is_file()


def test_export_command_errors_are_one_line_and_lose_nothing(tiny_ckpt, tmp_path, monkeypatch):
    _, _, ckpt = tiny_ckpt
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"the previous export")
    for kw, words in ((dict(ckpt=tmp_path / "nope"), "no checkpoint directory at"),
                      (dict(ckpt=ckpt, format="tflite"), "format 'tflite' is not supported"),
                      (dict(ckpt=ckpt, format="hf", int8=True), "apply to the ONNX export")):
        with pytest.raises(SLMLabError) as info:
            export_cmd.run(export_args(out=out, **kw))
        assert words in str(info.value) and "\n" not in str(info.value)
    def crash_mid_write(model, path):
        path.write_bytes(b"half a model")
        raise RuntimeError("export crashed")
    monkeypatch.setattr(onnx_export, "export_onnx", crash_mid_write)
    with pytest.raises(RuntimeError):
        export_cmd.run(export_args(ckpt=ckpt, out=out, int8=True))
    assert [p.name for p in out.iterdir()] == ["model.onnx"]                 # no half export, no staging left
    assert (out / "model.onnx").read_bytes() == b"the previous export"


def test_onnx_model_scores_and_chats_like_the_pytorch_model(tmp_path):
    """OnnxAsSLM lets task_eval and chat.chat run the exported graph: same choice scores (to float
    rounding) and the same greedy answer as the PyTorch model, through prefill and cached decode steps."""
    from slm_lab import chat, task_eval
    from slm_lab.onnx_slm import OnnxAsSLM

    torch.manual_seed(0)
    base = CharTokenizer(load_corpus("shakespeare")[:20_000])
    model = SLM(SLMConfig(family="llama", vocab_size=base.vocab_size, block_size=64, n_layer=2, n_head=2,
                          n_kv_head=1, d_model=32))
    model, tok = chat.add_chat_tokens(sharp(model, seed=3), base)
    onnx_model = OnnxAsSLM(export_onnx(model, tmp_path / "chat.onnx"))
    prompt, choices = "Who is there?", ["Nay, answer me", "I", "Long live the king"]
    for norm in (True, False):
        ref = task_eval.choice_logprobs(model, tok, prompt, choices, norm)
        got = task_eval.choice_logprobs(onnx_model, tok, prompt, choices, norm)
        assert torch.allclose(got, ref, atol=1e-4), (got, ref)
    answer = chat.chat(model, tok, prompt, max_new_tokens=12)
    assert len(answer) >= 4 and chat.chat(onnx_model, tok, prompt, max_new_tokens=12) == answer
    with pytest.raises(SLMLabError, match="inference only"):
        onnx_model(torch.zeros(1, 3, dtype=torch.long), targets=torch.zeros(1, 3, dtype=torch.long))
