"""Instruction data built offline from text every machine has: the course's Shakespeare corpus and
CPython's own documentation (`pydoc_data`, shipped with Python).

Three task families, each a natural-language instruction with one right answer:
- `source`: "Shakespeare or Python?" about a line of a play or a sentence of Python's documentation
  (two choices; chance 50%);
- `last_word`: which of four words ends a line of verse (the line without its last word, and four
  choices: the right one and three words that end other lines; chance 25%);
- `first_word`: what is the first word of a line (answered by generating it; the trivial rule, always
  answering the most common first word of the training lines, is its baseline).

Items are drawn deterministically (a seeded shuffle of the distinct lines); a line belongs to the
training items or to the test items, never both, so the test split shares no item with training. What
it cannot teach: knowledge or reasoning. Every answer is in (or read off) the prompt or the style of
the text; the tasks measure whether fine-tuning makes a small model follow an instruction format and
use what it learned in pretraining, not whether it knows anything new.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass

from .data import _python_docs, load_corpus

FAMILIES = ("source", "last_word", "first_word")
MAX_TEXT = 60                      # characters of quoted text, so a whole turn fits the 128-token context


@dataclass(frozen=True)
class Example:
    family: str
    prompt: str
    answer: str
    choices: tuple[str, ...] = ()  # multiple-choice families: the answer is one of these


@dataclass(frozen=True)
class Split:
    train: list[Example]
    test: list[Example]

    def family(self, name: str, part: str = "test") -> list[Example]:
        return [e for e in getattr(self, part) if e.family == name]


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def shakespeare_lines(vocab: set[str] | None = None) -> list[str]:
    """Distinct lines of verse or prose from the plays: 24-MAX_TEXT characters, starting with a letter, not a
    speaker's name or a stage direction, in first-seen order."""
    seen, out = set(), []
    for line in load_corpus("shakespeare").splitlines():
        line = line.strip()
        if not (24 <= len(line) <= MAX_TEXT) or not line[0].isalpha() or line.isupper() or "[" in line:
            continue
        if line.endswith(".") and len(line.split()) <= 2:             # "Romeo." — a speaker
            continue
        if (vocab is None or set(line) <= vocab) and line not in seen:
            seen.add(line)
            out.append(line)
    return out


def python_sentences(vocab: set[str] | None = None) -> list[str]:
    """Distinct sentences of Python's documentation, 24-MAX_TEXT characters, in the tokenizer's vocabulary."""
    seen, out = set(), []
    for s in re.split(r"(?<=[.:])\s+", _python_docs()):
        s = _clean(s)
        if 24 <= len(s) <= MAX_TEXT and s[0].isalpha() and (vocab is None or set(s) <= vocab) and s not in seen:
            seen.add(s)
            out.append(s)
    return out


def _last_word(line: str) -> tuple[str, str] | None:
    m = re.match(r"^(.*\S)\s+([A-Za-z']+)[.,;:!?]*$", line)
    return (m.group(1), m.group(2)) if m and len(m.group(2)) >= 3 else None


def _first_word(line: str) -> str | None:
    m = re.match(r"^([A-Za-z']+)", line)
    return m.group(1) if m else None


def build(vocab: set[str] | None = None, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Split:
    """n_train training and n_test test examples per family (fewer where the text runs out)."""
    rng = random.Random(seed)
    lines, docs = shakespeare_lines(vocab), python_sentences(vocab)
    rng.shuffle(lines)
    rng.shuffle(docs)
    n_doc_test = min(n_test // 2, len(docs) // 4)
    pools = {"test": (lines[: 3 * n_test], docs[:n_doc_test]), "train": (lines[3 * n_test:], docs[n_doc_test:])}
    ends = [w for w in (_last_word(line) for line in lines) if w]
    end_words = sorted({w for _, w in ends})
    split = {}
    for part, (plays, python) in pools.items():
        n = n_test if part == "test" else n_train
        ex: list[Example] = []
        # source: half from the plays, half from the documentation
        k = min(n // 2, len(python))
        for text, answer in [*((t, "Shakespeare") for t in plays[:k]), *((t, "Python") for t in python[:k])]:
            ex.append(Example("source", f"Shakespeare or Python? {text}", answer, ("Shakespeare", "Python")))
        # last_word: lines of their own (not the ones used for `source`)
        got = 0
        for line in plays[n: 2 * n] if part == "test" else plays[n: 3 * n]:
            split_line = _last_word(line)
            if split_line is None or got >= n:
                continue
            head, word = split_line
            others = [w for w in rng.sample(end_words, 8) if w.lower() != word.lower()][:3]
            choices = [word, *others]
            rng.shuffle(choices)
            ex.append(Example("last_word", f"Which word ends it: {head} ... ({', '.join(choices)})", word,
                              tuple(choices)))
            got += 1
        # first_word: lines of their own again
        got = 0
        for line in plays[2 * n:] if part == "test" else plays[3 * n:]:
            first = _first_word(line)
            if first is None or got >= n:
                continue
            ex.append(Example("first_word", f"First word of: {line}", first))
            got += 1
        rng.shuffle(ex)
        split[part] = ex
    return Split(split["train"], split["test"])


def most_common_answer(examples: list[Example], family: str) -> str:
    """The trivial rule's answer for a generated family: the commonest training answer."""
    return Counter(e.answer for e in examples if e.family == family).most_common(1)[0][0]


def baselines(split: Split) -> dict[str, float]:
    """Each family's baseline accuracy on the test items: chance for the multiple-choice families, the trivial
    rule (always the commonest training answer, compared after normalising) for `first_word`."""
    from .task_eval import normalise

    rule = normalise(most_common_answer(split.train, "first_word"))
    test = split.family("first_word")
    return {"source": 0.5, "last_word": 0.25,
            "first_word": sum(normalise(e.answer) == rule for e in test) / len(test)}
