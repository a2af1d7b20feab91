"""Every number a student reads has one source: each figure in a notebook's prose, a slide deck or the
README must be backed by a run (the notebook's stored outputs or code, benchmarks/results/*.json) or by a
literature constant with its source — at the precision it is written with."""
import re

import pytest

from slm_lab.course import claims as C
from slm_lab.course.notebooks import ROOT


def figures(text):
    return [f.text for f in C.numbers_in_prose(text)]


def backed(text, *values):
    pool = C.Sources(values)
    return [pool.backs(f) for f in C.numbers_in_prose(text)]


def test_rounding_is_understood_but_drift_is_not():
    assert backed("a 2.3× speed-up", 2.28) == [True]
    assert backed("a 2.3× speed-up", 2.36) == [False]
    assert backed("230 times less", 228.4) == [False]          # notebook 09's drift
    assert backed("slope 0.59", 0.584) == [False] and backed("slope 0.58", 0.584) == [True]
    assert backed("it has 814,720 parameters", 814720) == [True]
    assert backed("it has 2,672,832 parameters", 814720) == [False]  # the slides' old preset
    assert backed("GPT-3 has 175B parameters", 175_181_291_520) == [True]
    assert backed("costs +0.87 % val loss", 0.0087) == [True]
    assert backed("lr 3e-3", 0.003) == [True] and backed("lr 2e-3", 0.003) == [False]


def test_names_code_math_and_small_counts_are_not_claims():
    text = ("GPT-2, Llama-3-8B, SmolLM2-135M, int8, fp32, H100 and module 04 in `x = 1234.5`, "
            "$2^{16}$, [a link](https://x.org/9999), 4 layers, in 2022, Python 3.10–3.13\n1. first\n## 3. Title")
    assert figures(text) == []
    assert figures("about 1,234 tokens at 0.41 of the roofline, 3.8× faster, 4.5 MiB") == \
        ["1,234", "0.41", "3.8", "4.5"]


def test_the_literature_says_where_each_constant_comes_from():
    for value, source in C.LITERATURE:
        assert value > 0 and len(source) > 15 and re.search(r"\(|paper|course material|et al", source), source


REPORTS = {r.document: r for r in C.check_course(ROOT)}


@pytest.mark.parametrize("document", sorted(REPORTS))
def test_every_figure_has_a_source(document):
    report = REPORTS[document]
    lines = [f"{f.text!r} in “…{f.context}…”" for f in report.unbacked]
    assert not lines, (f"{document}: {len(lines)} of {len(report.figures)} figures match no stored output, "
                       "results file or literature constant:\n  " + "\n  ".join(lines))


DEV_TALK = re.compile(r"\b(?:the course's issue|issue #?\d+|TODO\(dev\)|FIXME|XXX)\b|\bfrom the issue\b", re.I)


@pytest.mark.parametrize("document", sorted(REPORTS))
def test_student_facing_text_does_not_speak_of_development(document):
    path = ROOT / document
    text = C.notebook_prose(C._read(path)) if path.suffix == ".ipynb" else path.read_text(encoding="utf-8")
    assert not DEV_TALK.search(text), f"{document}: {DEV_TALK.search(text).group(0)!r}"


def test_figures_inside_formulas_are_claims_too():
    assert figures(r"costs $3.1 \times 10^{23}$ FLOPs, by $C \approx 6ND$") == ["3.1e23"]
    assert backed(r"$3.1 \times 10^{23}$", 3.14e23) == [True] and backed(r"$3.9 \times 10^{14}$", 3.4e13) == [False]


def test_byte_units_are_understood():
    assert backed("3.26 MB in float32", 3_258_880) == [True] and backed("3.27 MB", 3_258_880) == [False]
    assert backed("4.5 MiB", 4.5 * 2**20 + 1000) == [True] and backed("349.21 GB", 349.21) == [True]
    assert backed("312 TFLOP/s", 312e12) == [True] and backed("313 TFLOP/s", 312e12) == [False]


def test_notebook_00s_fit_statements_are_what_sizing_computes():
    """Words can drift too: the sentences under notebook 00's fit grid, checked against sizing.fits."""
    from slm_lab import sizing

    prose = C.notebook_prose(C._read(ROOT / "notebooks" / "00_why_slms.ipynb"))
    fits = lambda name, dev, dt: sizing.fits(sizing.card(name), dev, dt)      # noqa: E731
    statements = {
        "Phi-3-mini and Gemini Nano-2 fit the phone in int8": fits("Phi-3-mini", "phone 8 GB", "int8"),
        "Llama-3-8B does not fit it even in int4": not fits("Llama-3-8B", "phone 8 GB", "int4"),
        "Llama-3-70B fits one 80 GB GPU in int8 but not\nin fp16":
            fits("Llama-3-70B", "A100 80 GB", "int8") and not fits("Llama-3-70B", "A100 80 GB", "fp16"),
        "GPT-3 175B fits no single device": not any(fits("GPT-3 175B", d, t) for d in sizing.HARDWARE
                                                    for t in ("fp16", "int8", "int4")),
    }
    for sentence, true in statements.items():
        assert sentence in prose, f"notebook 00 no longer says {sentence!r}: update this test with the prose"
        assert true, f"notebook 00 says {sentence!r}, but sizing.fits disagrees"
    assert backed("5.8 ms", 0.00582) == [True] and backed("5.8 min", 348.0) == [True] and backed("5.8 min", 330) == [False]
