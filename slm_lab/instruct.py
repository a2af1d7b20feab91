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
training, validation or test items, never two of them, so the test split shares no item with training and
choices made on validation items (a scoring rule, a threshold) are not tuned on the test. What
it cannot teach: knowledge or reasoning. Every answer is in (or read off) the prompt or the style of
the text; the tasks measure whether fine-tuning makes a small model follow an instruction format and
use what it learned in pretraining, not whether it knows anything new.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field

from .data import _python_docs, load_corpus

FAMILIES = ("source", "last_word", "first_word")
MAX_TEXT = 60                      # characters of quoted text, so a whole turn fits the 128-token context
MAX_TURN = 124                     # characters of prompt + longest choice: with the 3 chat markers ≤ 127 tokens


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
    val: list[Example] = field(default_factory=list)   # choices made before the test (scoring, thresholds)

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


def _examples(family: str, lines: list[str], n: int, end_words: list[str], rng: random.Random) -> list[Example]:
    """Up to n examples of a verse family from `lines` (lines the family cannot use are skipped)."""
    out: list[Example] = []
    for line in lines:
        if len(out) >= n:
            break
        if family == "last_word":
            split_line = _last_word(line)
            if split_line is None:
                continue
            head, word = split_line
            others = [w for w in rng.sample(end_words, 8) if w.lower() != word.lower()][:3]
            choices = [word, *others]
            rng.shuffle(choices)
            prompt = f"Which word ends it: {head} ... ({', '.join(choices)})"
            if len(prompt) + max(map(len, choices)) <= MAX_TURN:     # scoring appends each choice to the prompt
                out.append(Example("last_word", prompt, word, tuple(choices)))
        elif (first := _first_word(line)) is not None:
            out.append(Example("first_word", f"First word of: {line}", first))
    return out


def build(vocab: set[str] | None = None, n_train: int = 1200, n_test: int = 400, n_val: int = 100,
          seed: int = 0) -> Split:
    """Per family, n_train training, n_val validation and n_test test examples (`source` has fewer: it takes
    half its items from Python's documentation, a few hundred sentences, a quarter of them for testing)."""
    rng = random.Random(seed)
    lines, docs = shakespeare_lines(vocab), python_sentences(vocab)
    rng.shuffle(lines)
    rng.shuffle(docs)
    ends = [w for w in (_last_word(line) for line in lines) if w]
    end_words = sorted({w for _, w in ends})
    sizes = {"test": n_test, "val": n_val, "train": n_train}
    n_docs = {"test": min(n_test // 2, len(docs) // 4), "val": min(n_val // 2, len(docs) // 8)}
    n_docs["train"] = min(n_train // 2, len(docs) - n_docs["test"] - n_docs["val"])
    split, line_at, doc_at = {}, 0, 0
    for part, n in sizes.items():
        # each part, and each family within it, reads lines of its own: no line is in two examples
        chunk = lines[line_at: line_at + 4 * n]
        python = docs[doc_at: doc_at + n_docs[part]]
        line_at, doc_at = line_at + 4 * n, doc_at + n_docs[part]
        k = len(python)
        ex = [Example("source", f"Shakespeare or Python? {t}", "Shakespeare", ("Shakespeare", "Python")) for t in chunk[:k]]
        ex += [Example("source", f"Shakespeare or Python? {t}", "Python", ("Shakespeare", "Python")) for t in python]
        ex += _examples("last_word", chunk[k: k + 2 * n], n, end_words, rng)
        ex += _examples("first_word", chunk[k + 2 * n:], n, end_words, rng)
        rng.shuffle(ex)
        split[part] = ex
    return Split(split["train"], split["test"], split["val"])


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
