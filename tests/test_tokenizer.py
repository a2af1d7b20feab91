"""Tokenizers: exact round trips, real compression, clear errors, save/load."""
import random

import pytest

from slm_lab.data import load_corpus
from slm_lab.errors import SLMLabError
from slm_lab.tokenizer import (BPETokenizer, CharTokenizer, HFBPETokenizer, get_pair_counts, load_tokenizer,
                               merge)


@pytest.fixture(scope="module")
def sample_text():
    return load_corpus("shakespeare")[:200_000]


@pytest.fixture(scope="module")
def bpe(sample_text):
    return BPETokenizer().train(sample_text, vocab_size=356)


@pytest.fixture(scope="module")
def hf_bpe(sample_text):
    return HFBPETokenizer().train(sample_text, vocab_size=356)


def random_unicode(rng: random.Random, n: int) -> str:
    """Mixed ASCII, accents, CJK, emoji, combining marks, controls — and lone surrogates."""
    pools = [(32, 127), (0xC0, 0x17F), (0x4E00, 0x4FFF), (0x1F600, 0x1F64F), (0x300, 0x36F), (0, 32), (0xD800, 0xDFFF)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(pools)
        out.append(chr(rng.randrange(lo, hi)))
    return "".join(out)


def test_pair_counts_and_merge_known_values():
    assert get_pair_counts([1, 2, 1, 2, 3]) == {(1, 2): 2, (2, 1): 1, (2, 3): 1}
    assert merge([1, 2, 1, 2, 3], (1, 2), 9) == [9, 9, 3]
    assert merge([1, 1, 1], (1, 1), 9) == [9, 1]          # non-overlapping, left to right


def test_bpe_learns_the_most_frequent_pair_first():
    tok = BPETokenizer(pattern="").train("aaabdaaabac", vocab_size=258)
    a, b = ord("a"), ord("b")
    assert list(tok.merges) == [(a, a), (256, a)] or list(tok.merges)[0] == (a, a)
    assert tok.vocab[256] == b"aa"


@pytest.mark.parametrize("seed", range(5))
def test_bpe_round_trip_on_random_unicode(bpe, hf_bpe, seed):
    s = random_unicode(random.Random(seed), 300)
    assert bpe.decode(bpe.encode(s)) == s
    clean = "".join(c for c in s if not 0xD800 <= ord(c) <= 0xDFFF)   # HF tokenizers take valid Unicode only
    assert hf_bpe.decode(hf_bpe.encode(clean)) == clean


def test_both_bpes_compress_the_corpus(bpe, hf_bpe, sample_text):
    held_out = load_corpus("shakespeare")[-50_000:]
    n_bytes = len(held_out.encode("utf-8"))
    ratio_ours = n_bytes / len(bpe.encode(held_out))
    ratio_hf = n_bytes / len(hf_bpe.encode(held_out))
    print(f"bytes per token at vocab 356: from scratch {ratio_ours:.2f}, HF tokenizers {ratio_hf:.2f}")
    assert ratio_ours > 1.5 and ratio_hf > 1.5
    assert abs(ratio_ours - ratio_hf) / ratio_hf < 0.15        # the same algorithm compresses about the same


def test_save_load_round_trip(tmp_path, bpe, hf_bpe, sample_text):
    char = CharTokenizer(sample_text)
    for tok in (char, bpe, hf_bpe):
        path = tmp_path / f"{tok.kind}.json"
        tok.save(path)
        again = load_tokenizer(path)
        assert type(again) is type(tok)
        assert again.encode(sample_text[:5000]) == tok.encode(sample_text[:5000])


def test_char_tokenizer_names_the_unknown_character():
    tok = CharTokenizer("abc ")
    assert tok.decode(tok.encode("cab a")) == "cab a"
    with pytest.raises(SLMLabError, match=r"'é' \(U\+00E9\) is not in this tokenizer's vocabulary of 4"):
        tok.encode("abé")


def test_loading_a_missing_or_bad_tokenizer_is_one_clear_error(tmp_path):
    with pytest.raises(SLMLabError, match="no tokenizer file"):
        load_tokenizer(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SLMLabError, match="not valid JSON"):
        load_tokenizer(tmp_path / "bad.json")
