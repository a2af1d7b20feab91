"""Tokenizers with one interface: `encode(str) -> list[int]`, `decode(ids) -> str`, `vocab_size`, save/load.

- `CharTokenizer`: one id per character seen in the training text.
- `BPETokenizer`: byte-level byte-pair encoding written from scratch (GPT-2's recipe, minbpe's layout):
  text → regex chunks → UTF-8 bytes → repeatedly merge the most frequent adjacent pair (ties: the
  smallest pair).
- `HFBPETokenizer`: the same interface over Hugging Face `tokenizers` (Rust), for comparison and speed.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import regex

from .errors import SLMLabError

# GPT-2's pre-tokenizer: contractions, letters, numbers, punctuation and whitespace stay apart,
# so merges never glue a word to the space or punctuation after it.
GPT2_SPLIT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
UTF8 = dict(encoding="utf-8", errors="surrogatepass")   # lone surrogates survive the round trip too


def _ids(ids) -> list[int]:
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)


class CharTokenizer:
    """Characters ↔ ids. Build it from text: `CharTokenizer(text)`."""

    kind = "char"

    def __init__(self, text: str = "", chars: Iterable[str] | None = None):
        self.chars = sorted(set(chars if chars is not None else text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as exc:
            c = exc.args[0]
            raise SLMLabError(
                f"character {c!r} (U+{ord(c):04X}) is not in this tokenizer's vocabulary of {self.vocab_size} "
                "characters; remove it from the prompt or train a tokenizer on text that contains it.") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in _ids(ids))

    def to_dict(self) -> dict:
        return {"type": self.kind, "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        return cls(chars=list(d["chars"]))

    def save(self, path: str | Path) -> None:
        _save_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        return cls.from_dict(_load_json(path))


def get_pair_counts(ids: list[int], counts: Counter | None = None, weight: int = 1) -> Counter:
    """How often each adjacent pair occurs: [1, 2, 1, 2] → {(1, 2): 2, (2, 1): 1}."""
    counts = Counter() if counts is None else counts
    for pair in zip(ids, ids[1:], strict=False):
        counts[pair] += weight
    return counts


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of `pair` (left to right) by `new_id`."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def apply_merges(ids: list[int], merges: dict[tuple[int, int], int]) -> list[int]:
    """Encode byte ids with learned merges {(a, b): new_id}: apply the earliest-learned merge present
    (the lowest new id), exactly as training did, until none applies."""
    while len(ids) > 1:
        pair = min(zip(ids, ids[1:], strict=False), key=lambda p: merges.get(p, float("inf")))
        if pair not in merges:
            break
        ids = merge(ids, pair, merges[pair])
    return ids


class BPETokenizer:
    """Byte-level BPE from scratch. `tok = BPETokenizer(); tok.train(text, vocab_size=512)`."""

    kind = "bpe"

    def __init__(self, pattern: str = GPT2_SPLIT):
        self.pattern = pattern
        self.merges: dict[tuple[int, int], int] = {}     # (a, b) → new id, in the order learned
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def _chunks(self, text: str) -> list[str]:
        return regex.findall(self.pattern, text) if self.pattern else [text]

    def train(self, text: str, vocab_size: int, verbose: bool = False) -> BPETokenizer:
        """Learn vocab_size - 256 merges. Each distinct chunk is processed once, weighted by its count."""
        if vocab_size < 256:
            raise SLMLabError(f"vocab_size={vocab_size} is below the 256 byte tokens; choose 256 or more.")
        words = Counter(self._chunks(text))
        seqs = [list(w.encode(**UTF8)) for w in words]
        freq = list(words.values())
        counts: Counter = Counter()
        where: dict[tuple[int, int], set[int]] = defaultdict(set)   # pair → chunks containing it
        for w, ids in enumerate(seqs):
            get_pair_counts(ids, counts, freq[w])
            for pair in zip(ids, ids[1:], strict=False):
                where[pair].add(w)
        self.merges, self.vocab = {}, {i: bytes([i]) for i in range(256)}
        for new_id in range(256, vocab_size):
            if not counts:
                break
            # The most frequent pair; ties go to the smallest pair (a, b), so the result depends on the
            # counts alone, not on the order in which chunks or merges created the pairs.
            pair = min(counts, key=lambda p: (-counts[p], p))
            if counts[pair] < 1:
                break
            for w in list(where.pop(pair, ())):
                old = seqs[w]
                get_pair_counts(old, counts, -freq[w])              # take the chunk's old pairs out
                seqs[w] = new = merge(old, pair, new_id)
                get_pair_counts(new, counts, freq[w])               # and put its new pairs in
                for p in zip(new, new[1:], strict=False):
                    where[p].add(w)
            counts = +counts                                        # drop pairs whose count reached 0
            self.merges[pair] = new_id
            self.vocab[new_id] = self.vocab[pair[0]] + self.vocab[pair[1]]
            if verbose:
                print(f"merge {new_id - 255}: {pair} → {new_id} {self.vocab[new_id]!r}")
        self._cache = {}
        return self

    def _encode_chunk(self, chunk: str) -> list[int]:
        return apply_merges(list(chunk.encode(**UTF8)), self.merges)

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for chunk in self._chunks(text):
            ids = self._cache.get(chunk)
            if ids is None:
                ids = self._cache[chunk] = self._encode_chunk(chunk)
            out.extend(ids)
        return out

    def decode(self, ids) -> str:
        try:
            data = b"".join(self.vocab[i] for i in _ids(ids))
        except KeyError as exc:
            raise SLMLabError(f"token id {exc.args[0]} is not in this tokenizer's vocabulary of "
                              f"{self.vocab_size}.") from None
        try:
            return data.decode(**UTF8)
        except UnicodeDecodeError:   # ids that split a character (e.g. one sampled token): show U+FFFD
            return data.decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"type": self.kind, "pattern": self.pattern, "merges": [[a, b] for (a, b) in self.merges]}

    @classmethod
    def from_dict(cls, d: dict) -> BPETokenizer:
        tok = cls(d.get("pattern", GPT2_SPLIT))
        for new_id, (a, b) in enumerate(d["merges"], start=256):
            tok.merges[(a, b)] = new_id
            tok.vocab[new_id] = tok.vocab[a] + tok.vocab[b]
        return tok

    def save(self, path: str | Path) -> None:
        _save_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        return cls.from_dict(_load_json(path))


class HFBPETokenizer:
    """Byte-level BPE trained by Hugging Face `tokenizers`, behind the course's interface."""

    kind = "hf_bpe"

    def __init__(self, tokenizer=None):
        self.tk = tokenizer

    def train(self, text: str, vocab_size: int, chunk_chars: int = 10_000) -> HFBPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tk.train_from_iterator((text[i:i + chunk_chars] for i in range(0, len(text), chunk_chars)), trainer)
        self.tk = tk
        return self

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text).ids

    def decode(self, ids) -> str:
        return self.tk.decode(_ids(ids), skip_special_tokens=False)

    def to_dict(self) -> dict:
        return {"type": self.kind, "tokenizer": json.loads(self.tk.to_str())}

    @classmethod
    def from_dict(cls, d: dict) -> HFBPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(json.dumps(d["tokenizer"])))

    def save(self, path: str | Path) -> None:
        _save_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> HFBPETokenizer:
        return cls.from_dict(_load_json(path))


Tokenizer = CharTokenizer | BPETokenizer | HFBPETokenizer   # any course tokenizer
KINDS: dict[str, type[Tokenizer]] = {c.kind: c for c in (CharTokenizer, BPETokenizer, HFBPETokenizer)}


def tokenizer_from_dict(d: dict) -> Tokenizer:
    if d.get("type") not in KINDS:
        raise SLMLabError(f"tokenizer type {d.get('type')!r} is unknown; expected one of {sorted(KINDS)}.")
    return KINDS[d["type"]].from_dict(d)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load any course tokenizer saved with `.save(path)`."""
    return tokenizer_from_dict(_load_json(path))


def _save_json(obj: dict, path: str | Path) -> None:
    from .atomic import write_text

    write_text(path, json.dumps(obj, ensure_ascii=False))


def _load_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SLMLabError(f"no tokenizer file at {path}; check the path or save one with tokenizer.save(path).")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SLMLabError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); re-save the tokenizer.") from None
