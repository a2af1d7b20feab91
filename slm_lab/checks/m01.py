"""Checks for lab 01 — tokens: pair counts, one merge, a tiny BPE, encode/decode round trip.

The reference is `slm_lab.tokenizer` (get_pair_counts, merge, apply_merges, BPETokenizer without a
pre-tokenizer, so merges may cross words as in the lab).
"""
from __future__ import annotations

import random

from .. import tokenizer as package
from . import call, fail, forbids, passed

SAMPLE = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
          "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles. " * 3)
# Non-ASCII text: a trainer over code points (ord) instead of UTF-8 bytes learns other merges here.
UNICODE_SAMPLE = "naïve café ☕, déjà vu, 東京 🤖. " * 6 + SAMPLE[:120]


def _random_ids(rng, n, hi=6):
    return [rng.randrange(hi) for _ in range(n)]


@forbids("slm_lab.tokenizer.get_pair_counts")
def check_pair_counts(get_pair_counts) -> None:
    """get_pair_counts(ids) → {(a, b): count} over adjacent pairs."""
    what = "get_pair_counts"
    rng = random.Random(0)
    for ids in ([1, 2, 1, 2, 3], [], [7], [5, 5, 5, 5], _random_ids(rng, 50), _random_ids(rng, 200, 3)):
        ref = dict(package.get_pair_counts(ids))
        got = call(get_pair_counts, list(ids), what=what)
        if not isinstance(got, dict):
            fail(f"{what} should return a dict {{(a, b): count}}, got {type(got).__name__}.")
        got = dict(got)
        if got != ref:
            if len(ids) < 2 and got:
                fail(f"{what}({ids}) returned {got}, but a list this short has no pairs.")
            missing = [p for p in ref if p not in got]
            if missing:
                fail(f"{what}({ids[:8]}{'…' if len(ids) > 8 else ''}) misses the pair {missing[0]} — "
                     "count every adjacent pair, including the last one (zip(ids, ids[1:])).")
            wrong = next(p for p in got if got[p] != ref.get(p))
            fail(f"{what} counts {wrong} {got[wrong]} times, expected {ref.get(wrong, 0)} in "
                 f"{ids[:12]}{'…' if len(ids) > 12 else ''}.")
    passed("pair counts")


@forbids("slm_lab.tokenizer.merge")
def check_merge(merge) -> None:
    """merge(ids, pair, new_id) → a new list with every non-overlapping pair (left to right) replaced."""
    what = "merge"
    rng = random.Random(1)
    cases = [([1, 2, 1, 2, 3], (1, 2), 9), ([1, 1, 1], (1, 1), 9), ([1, 1, 1, 1], (1, 1), 9),
             ([3, 1, 2], (1, 2), 9), ([1, 2], (2, 1), 9), ([], (1, 2), 9)]
    cases += [(_random_ids(rng, 40, 3), (1, 2), 7) for _ in range(5)]
    for ids, pair, new_id in cases:
        keep, ref = list(ids), package.merge(ids, pair, new_id)
        got = call(merge, ids, pair, new_id, what=what)
        if ids != keep:
            fail(f"{what} changed its input list in place — build and return a new list.")
        if not isinstance(got, list) or got != ref:
            hint = ""
            if ids == [1, 1, 1]:
                hint = " — pairs do not overlap: after a merge, skip both merged ids"
            elif ids and tuple(ids[-2:]) == pair:
                hint = " — the pair at the very end must be merged too"
            fail(f"{what}({ids[:10]}{'…' if len(ids) > 10 else ''}, {pair}, {new_id}) returned "
                 f"{got if isinstance(got, list) else type(got).__name__}, expected {ref}{hint}.")
    passed("merge")


@forbids("slm_lab.tokenizer.BPETokenizer",
         "slm_lab.tokenizer.get_pair_counts",
         "slm_lab.tokenizer.merge",
         "slm_lab.checks.m01.reference_merges")
def check_train_bpe(train_bpe) -> None:
    """train_bpe(text, vocab_size) → {(a, b): new_id} with ids 256, 257, … in the order learned."""
    what = "train_bpe"
    merges = call(train_bpe, SAMPLE, 276, what=what)
    if not isinstance(merges, dict):
        fail(f"{what} should return a dict {{(a, b): new_id}}, got {type(merges).__name__}.")
    if len(merges) != 20:
        fail(f"{what}(text, vocab_size=276) learned {len(merges)} merges, expected 276 - 256 = 20.")
    if list(merges.values()) != list(range(256, 276)):
        fail(f"{what}: new ids should be 256, 257, … in the order the merges were learned, "
             f"got {list(merges.values())[:5]}….")
    _replay(what, list(SAMPLE.encode("utf-8")), merges)
    n = 12
    merges = call(train_bpe, UNICODE_SAMPLE, 256 + n, what=what)
    if not isinstance(merges, dict) or len(merges) != n:
        fail(f"{what}(non-ASCII text, vocab_size={256 + n}) should learn {n} merges, got "
             f"{len(merges) if isinstance(merges, dict) else type(merges).__name__}.")
    if _first_bad_merge(list(UNICODE_SAMPLE.encode("utf-8")), merges) is not None and \
            _first_bad_merge([ord(c) for c in UNICODE_SAMPLE], merges) is None:
        fail(f"{what} trains on Unicode code points (ord(c)), not UTF-8 bytes: on {UNICODE_SAMPLE[:12]!r} its merges "
             "join code points like 233 ('é') or 9749 ('☕') — start from list(text.encode('utf-8')).")
    _replay(f"{what} (non-ASCII text)", list(UNICODE_SAMPLE.encode("utf-8")), merges)
    passed("train_bpe", "20 merges, each the most frequent pair")


def _first_bad_merge(ids: list[int], merges: dict):
    """(step, pair, its count, the best count) of the first merge that is not a most frequent pair, or None."""
    for step, (pair, new_id) in enumerate(merges.items()):
        counts = package.get_pair_counts(ids)
        best = max(counts.values(), default=0)
        if counts.get(tuple(pair), 0) != best or best == 0:
            return step, pair, counts.get(tuple(pair), 0), best
        ids = package.merge(ids, tuple(pair), new_id)
    return None


def _replay(what: str, ids: list[int], merges: dict) -> None:
    bad = _first_bad_merge(ids, merges)
    if bad is not None:
        step, pair, count, best = bad
        fail(f"{what}: merge {step + 1} joins {pair}, which occurs {count} times, "
             f"but the most frequent pair occurs {best} times — always merge the most frequent pair.")


def _most_frequent_first(ids: list[int], merges: dict) -> list[int]:
    """The mistake: apply the learned pair most frequent in this text first, instead of the earliest learned."""
    while True:
        counts = package.get_pair_counts(ids)
        known = [p for p in counts if p in merges]
        if not known:
            return ids
        pair = max(known, key=lambda p: counts[p])
        ids = package.merge(ids, pair, merges[pair])


# Merges where the order matters: "ab" was learned first, but "bc" is more frequent in "abcbcbc".
_ORDER_MERGES = {(97, 98): 256, (98, 99): 257}
_ORDER_TEXT = "abcbcbc"


def reference_merges(vocab_size: int = 300) -> dict:
    """Merges the package's BPE learns on SAMPLE without a pre-tokenizer (what the round-trip check uses by default)."""
    return dict(package.BPETokenizer(pattern="").train(SAMPLE, vocab_size).merges)


@forbids("slm_lab.tokenizer.BPETokenizer", "slm_lab.tokenizer.apply_merges", "slm_lab.checks.m01.reference_merges")
def check_round_trip(encode, decode, merges: dict | None = None) -> None:
    """encode(text, merges) → ids and decode(ids, merges) → text: exact round trip, merges in learned order."""
    merges = reference_merges() if merges is None else merges
    rng = random.Random(2)
    texts = [SAMPLE[:200], "", "a", "naïve café — 東京 🤖", "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(100))]
    cases = [(text, merges) for text in texts] + [(_ORDER_TEXT, _ORDER_MERGES)]
    for text, table in cases:
        ref = package.apply_merges(list(text.encode("utf-8")), table)
        ids = call(encode, text, table, what="encode")
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            fail(f"encode should return a list of ints, got {type(ids).__name__}.")
        back = call(decode, ids, table, what="decode")
        if back != text:
            fail(f"decode(encode(text)) != text for {text[:30]!r}: got {str(back)[:30]!r} — decode the bytes of all "
                 "tokens together with .decode('utf-8'), not token by token.")
        if ids != ref:
            if ids == _most_frequent_first(list(text.encode("utf-8")), table):
                fail(f"encode({text[:20]!r}) applies the pair most frequent in the text first, giving {ids[:8]}; "
                     f"expected {ref[:8]} — apply the earliest-learned merge first (lowest new id), not the commonest.")
            fail(f"encode({text[:20]!r}…) gives {len(ids)} tokens {ids[:6]}, the reference gives {len(ref)} {ref[:6]} — "
                 "apply the earliest-learned merge first (lowest new id), repeating until none applies.")
    if len(call(encode, SAMPLE, merges, what="encode")) >= len(SAMPLE.encode("utf-8")):
        fail("encode does not compress: the merges should make the text shorter than its bytes.")
    passed("encode/decode", "exact round trip on Unicode, merges in order")


CHECKS = {"01.pair_counts": check_pair_counts, "01.merge": check_merge, "01.train_bpe": check_train_bpe,
          "01.round_trip": check_round_trip}
