"""Loading Hub models, tested offline: a random-weight Llama and a tokenizer saved with save_pretrained to a
temporary folder load back with the same logits, convert to the course's SLM with the same logits, and run
transformers' assisted generation to the same greedy tokens; offline, hub_source says so without waiting, and
a model that cannot be loaded is one line."""
import pytest
import torch

from slm_lab import hub
from slm_lab.errors import SLMLabError

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


def save_tiny_llama(folder, seed, vocab):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(folder)
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(folder)
    return model


def test_a_saved_model_loads_converts_and_drafts_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("SLM_LAB_OFFLINE", "1")
    vocab = {w: i for i, w in enumerate("<unk> the a fox dog jumps over lazy brown quick".split())}
    target_dir, draft_dir = tmp_path / "target", tmp_path / "draft"
    saved = save_tiny_llama(target_dir, 0, vocab)
    save_tiny_llama(draft_dir, 1, vocab)
    assert hub.hub_source([target_dir, draft_dir]) == "local"
    target, tok = hub.load_causal_lm(target_dir, "local")
    draft, _ = hub.load_causal_lm(draft_dir, "local")
    ids = tok("the quick brown fox jumps over the lazy dog", return_tensors="pt")["input_ids"]
    assert ids.shape[1] == 9 and int(ids.max()) < len(vocab)
    with torch.no_grad():
        assert torch.allclose(target(ids).logits, saved(ids).logits, atol=1e-6)
        from slm_lab.hf import from_hf
        assert torch.allclose(from_hf(target)(ids).logits, saved(ids).logits, atol=1e-4)
        plain = target.generate(ids, max_new_tokens=8, do_sample=False)
        assisted = target.generate(ids, max_new_tokens=8, do_sample=False, assistant_model=draft)
    assert torch.equal(plain, assisted)


def test_offline_and_missing_models_get_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SLM_LAB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))          # an empty cache
    assert hub.hub_source(["HuggingFaceTB/SmolLM2-135M"]) is None
    with pytest.raises(SLMLabError, match="could not load") as err:
        hub.load_causal_lm(tmp_path / "nothing-here", "local")
    assert "\n" not in str(err.value)
    with pytest.raises(SLMLabError, match="not one of"):
        hub.load_causal_lm(tmp_path, "internet")


def test_a_notebooks_real_slm_section_skips_in_one_line_offline(tmp_path, monkeypatch, capsys):
    from slm_lab import real_slm

    monkeypatch.setenv("SLM_LAB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert real_slm.load_or_skip() is None
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("offline:") and real_slm.REPO in out
    vocab = {w: i for i, w in enumerate("<unk> the fox".split())}
    save_tiny_llama(tmp_path / "m", 0, vocab)
    model, _ = real_slm.load_or_skip(tmp_path / "m")
    assert model.cfg.n_layer == 2 and capsys.readouterr().out == ""


def test_a_real_checkpoint_runs_module_05s_report_offline(tmp_path, monkeypatch):
    """The path notebook 05 takes with a network, on a saved random-weight Llama: same logits as the
    transformers model, batches cut from a text, every format's loss near fp32's and fewer bytes."""
    from slm_lab import real_slm

    monkeypatch.setenv("SLM_LAB_OFFLINE", "1")
    vocab = {w: i for i, w in enumerate("<unk> the a fox dog jumps over lazy brown quick".split())}
    saved = save_tiny_llama(tmp_path / "m", 0, vocab)
    model, tok = real_slm.load_slm(tmp_path / "m", "local")
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * 20)
    batches = real_slm.token_batches(tok, text, n=3, length=16)
    assert len(batches) == 3 and batches[0][0].shape == (1, 16)
    assert torch.equal(batches[0][1][0, :-1], batches[0][0][0, 1:])              # y is x shifted by one
    with torch.no_grad():
        assert torch.allclose(model(batches[0][0]).logits, saved(batches[0][0]).logits, atol=1e-4)
    report = real_slm.quantization_report(model, batches, decode_tokens=4, repeats=1)
    rows = report["rows"]
    assert set(rows) == {"fp32", *real_slm.FORMATS}
    for name in real_slm.FORMATS:
        assert abs(rows[name]["loss"] - rows["fp32"]["loss"]) < 0.05 * rows["fp32"]["loss"]
        assert rows[name]["bytes"] < 0.5 * rows["fp32"]["bytes"] and rows[name]["decode_tokens_per_s"] > 0
    assert len(report["outliers"]) == 3 and all(r >= 1.0 for _, r in report["outliers"])
    assert real_slm.token_batches(tok, "the fox", n=3, length=16) == []           # too short: no window


def test_a_real_checkpoint_runs_module_06s_and_08s_reports_offline(tmp_path, monkeypatch):
    """Notebooks 06 and 08 with a network, on a saved random-weight Llama: a structured cut removes exactly
    the parameters of the heads and neurons it drops, and the ONNX exports compute PyTorch's logits."""
    pytest.importorskip("onnxruntime")
    from slm_lab import real_slm

    monkeypatch.setenv("SLM_LAB_OFFLINE", "1")
    vocab = {w: i for i, w in enumerate("<unk> the a fox dog jumps over lazy brown quick".split())}
    save_tiny_llama(tmp_path / "m", 0, vocab)
    model, tok = real_slm.load_slm(tmp_path / "m", "local")
    batches = real_slm.token_batches(tok, " ".join(["the quick brown fox jumps over the lazy dog"] * 20), n=2, length=16)
    rows = real_slm.pruning_report(model, batches, [(1, 32)], decode_tokens=4, repeats=1)
    # d_model 32, head_dim 8: per layer q/o lose 2 heads (2·16·32), k/v one group (2·8·32), the MLP 32 neurons (3·32·32)
    removed = 2 * (2 * 16 * 32 + 2 * 8 * 32 + 3 * 32 * 32)
    assert rows["unpruned"]["params"] - rows["1 kv heads, d_ff 32"]["params"] == removed
    assert all(r["decode_tokens_per_s"] > 0 for r in rows.values())
    deploy = real_slm.deployment_report(model, batches, tmp_path / "onnx", decode_tokens=4, repeats=1)
    assert set(deploy) == {"pytorch fp32", "onnx fp32", "onnx int8 per channel", "onnx int8 per tensor",
                           "onnx int4 symmetric", "onnx int4 zero-points"}
    assert deploy["onnx fp32"]["max_logit_diff"] < 1e-4
    assert abs(deploy["onnx fp32"]["loss"] - deploy["pytorch fp32"]["loss"]) < 1e-4
    for name, r in deploy.items():
        assert abs(r["loss"] - deploy["pytorch fp32"]["loss"]) < 0.05 * deploy["pytorch fp32"]["loss"], name
        assert r["decode_tokens_per_s"] > 0 and r["file_mb"] > 0
