"""Tokenizers: exact round trips, real compression, clear errors, save/load."""
import random
from collections import Counter

import pytest
import regex

from slm_lab.data import load_corpus
from slm_lab.errors import SLMLabError
from slm_lab.tokenizer import (GPT2_SPLIT, BPETokenizer, CharTokenizer, HFBPETokenizer, get_pair_counts,
                               load_tokenizer, merge)


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


def test_bpe_learns_the_most_frequent_pair_first_and_ties_go_to_the_smallest_pair():
    a, b, c, d = (ord(ch) for ch in "abcd")
    tok = BPETokenizer(pattern="").train("aaabdaaabac", vocab_size=259)
    # aa (4) first; then (256, a) and (a, b) both occur twice → the smaller pair, (a, b); then aa·ab
    assert list(tok.merges.items()) == [((a, a), 256), ((a, b), 257), ((256, 257), 258)]
    assert tok.vocab[256] == b"aa" and tok.vocab[258] == b"aaab"
    # every pair occurs once: (a, b) < (b, c) < (c, d) although the text shows them the other way round
    tok = BPETokenizer(pattern="").train("dcab", vocab_size=257)
    assert list(tok.merges) == [(a, b)]


def recount_merges(texts, pattern, n_merges):
    """BPE written out plainly, as the reference: split every text into chunks, count byte pairs over all
    chunks afresh at each step, merge the most frequent (ties: the smallest pair) in every chunk."""
    chunks = [list(ch.encode("utf-8")) for t in texts for ch in (regex.findall(pattern, t) if pattern else [t])]
    merges = []
    for new_id in range(256, 256 + n_merges):
        counts = Counter(p for ch in chunks for p in zip(ch, ch[1:]))
        if not counts:
            break
        top = max(counts.values())
        pair = sorted(p for p, n in counts.items() if n == top)[0]
        for k, ch in enumerate(chunks):
            out, i = [], 0
            while i < len(ch):
                if ch[i:i + 2] == list(pair):
                    out.append(new_id)
                    i += 2
                else:
                    out.append(ch[i])
                    i += 1
            chunks[k] = out
        merges.append(pair)
    return merges


BPE_TEXTS = ["the cat and the hat and the bat",
             "naïve café — naïve cafés, 東京 and 東京タワー 🤖🤖 🤖!",
             "xyxy zwzw abab",           # three pairs that occur twice each: a deliberate tie
             "aaaa bbbb aaaa"]


@pytest.mark.parametrize("pattern", [GPT2_SPLIT, ""], ids=["gpt2-split", "no-split"])
def test_bpe_merges_equal_an_independent_recount(pattern):
    text = "\n".join(BPE_TEXTS)
    expected = recount_merges([text], pattern, 10_000)            # until no pair is left
    tok = BPETokenizer(pattern=pattern).train(text, vocab_size=256 + 10_000)
    assert list(tok.merges) == expected
    assert list(tok.merges.values()) == list(range(256, 256 + len(expected)))
    for new_id, (x, y) in enumerate(expected, start=256):
        assert tok.vocab[new_id] == tok.vocab[x] + tok.vocab[y]
    short = BPETokenizer(pattern=pattern).train(text, vocab_size=256 + 25)
    assert list(short.merges) == expected[:25]
    assert tok.decode(tok.encode(text)) == text


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
