"""Every number a student reads has a source: find the numbers in prose and the numbers they may come from.

`numbers_in_prose(markdown)` returns the figures a reader takes as facts (code, formulas, links, model
names such as "GPT-2" or "int8", module numbers and small counts are left out). `numbers_in_text(text)`
returns every number in a source: stored outputs, code, results files. A prose figure is *backed* when
some source value rounds to it at the precision it is written with ("2.3×" is backed by 2.28, "228" is
not backed by 230), after its suffix (K, M, B, T, %, GB…) is applied. `tests/test_claims.py` applies
this to notebooks, slides and the README; `LITERATURE` lists the constants from the source material,
each with where it comes from.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .notebooks import executed_notebooks

# A number: 1,234,567.89 | 1234.5 | .5 | 3e-3, then an optional scale suffix.
_NUM = r"(?<![\w.])(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+)"
_SCALE = {"k": 1e3, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12,
          "thousand": 1e3, "million": 1e6, "billion": 1e9, "trillion": 1e12}
NUMBER = re.compile(_NUM + r"(?:\s?(k|K|M|B|G|T)(?![a-zA-Z])|\s(thousand|million|billion|trillion)\b)?(\s?%)?")
# Words after which a number names a thing rather than states a fact.
_NAMING = re.compile(r"(?:module|modules|lab|labs|notebook|notebooks|deck|section|step|chapter|part|cell|"
                     r"figure|table|row|column|item|question|task|exercise|issue|Python|version|v)\s*$", re.I)


# Units with a scale: "3.26 MB" may be backed by 3,258,880 bytes, "312 TFLOP/s" by 3.12e14 FLOP/s,
# "5.8 ms" by 0.0058 s, "5.8 min" by 348 s.
_BYTES = {"kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KiB": 2.0**10, "MiB": 2.0**20, "GiB": 2.0**30,
          "GFLOP": 1e9, "TFLOP": 1e12, "PFLOP": 1e15, "ms": 1e-3, "µs": 1e-6, "min": 60.0}
_BYTE_UNIT = re.compile(r"\s?(kB|KB|MB|GB|TB|KiB|MiB|GiB|GFLOP|TFLOP|PFLOP|ms|µs|min)(?![a-zA-Z])")


@dataclass(frozen=True)
class Figure:
    text: str          # as written, e.g. "2.3×" or "814,720"
    value: float       # with its scale applied
    tolerance: float   # half a unit in the last written digit, scaled
    percent: bool
    context: str       # the words around it, for the failure message
    unit: float = 1.0  # bytes per unit when a byte unit follows ("3.26 MB" may be backed by 3,258,880 bytes)


_SCIENTIFIC = re.compile(r"(\d+(?:\.\d+)?)\s*\\(?:times|cdot)\s*10\^\{?(-?\d+)\}?")


def _math_figures(math_text: str) -> str:
    """Keep the figures written as a × 10^b inside a formula (as 'aeb'); the rest of the formula is not prose."""
    return " " + " ".join(f"{a}e{b}" for a, b in _SCIENTIFIC.findall(math_text)) + " "


def _strip_markup(md: str) -> str:
    md = re.sub(r"```.*?```", " ", md, flags=re.S)                 # code blocks
    md = re.sub(r"`[^`\n]*`", " ", md)                             # inline code
    md = re.sub(r"\$\$.*?\$\$", lambda m: _math_figures(m.group(0)), md, flags=re.S)   # display math
    md = re.sub(r"(?<!\\)\$[^$\n]+\$", lambda m: _math_figures(m.group(0)), md)        # inline math
    md = re.sub(r"\]\([^)]*\)", "]", md)                           # link targets
    md = re.sub(r"https?://\S+", " ", md)                          # bare URLs
    md = re.sub(r"<[^>]+>", " ", md)                               # HTML tags
    md = re.sub(r"^\s*(?:#+\s*)?\d+[.)]\s", " ", md, flags=re.M)   # list / heading numbers "1. "
    md = re.sub(r"^\s*#+\s*\d+\b", " ", md, flags=re.M)            # "## 03 Title"
    return md


def _value(digits: str) -> float:
    return float(digits.replace(",", ""))


def _tolerance(digits: str) -> float:
    d = digits.replace(",", "").lower()
    if "e" in d:
        mantissa, exp = d.split("e")
        decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
        return 0.5 * 10 ** (int(exp) - decimals)
    decimals = len(d.split(".")[1]) if "." in d else 0
    return 0.5 * 10 ** -decimals


def numbers_in_prose(markdown: str, min_integer: int = 12) -> list[Figure]:
    """The figures in prose that claim something: integers above `min_integer`, decimals, scaled values."""
    text = _strip_markup(markdown)
    out = []
    for m in NUMBER.finditer(text):
        digits, suffix, pct = m.group(1), m.group(2) or m.group(3) or "", bool(m.group(4))
        before, after = text[max(0, m.start() - 40):m.start()], text[m.end():m.end() + 40]
        word_match = re.search(r"[\w.\-+]*$", before)
        word = word_match.group(0) if word_match else ""
        if re.search(r"[A-Za-z]", word):
            continue                                               # part of a name: GPT-2, Llama-3-8B, int8, H100
        if re.match(r"-[A-Za-z]", after) or re.match(r"[A-Za-z]", after) and not suffix:
            if not re.match(r"(?:x|×|s\b|ms|min|h\b|GB|MB|KB|kB|MiB|GiB|B\b|M\b|tok|bit|px)", after):
                continue                                           # 3rd, 2D, 4-bit… (a unit is kept)
        if _NAMING.search(before) or _NAMING.search(re.sub(r"[\d.]+\s*[–-]\s*$", "", before)):
            continue                                               # "module 04", "Python 3.10–3.13"
        value = _value(digits) * _SCALE.get(suffix, 1.0)
        is_plain_int = "." not in digits and "e" not in digits.lower() and not suffix and not pct
        if is_plain_int and (value <= min_integer or (1900 <= value <= 2100 and "," not in digits)):
            continue                                               # small counts and years
        tol = _tolerance(digits) * _SCALE.get(suffix, 1.0)
        context = re.sub(r"\s+", " ", (before[-30:] + "⟨" + m.group(0) + "⟩" + after[:30])).strip()
        unit = _BYTE_UNIT.match(after)
        out.append(Figure(m.group(0), value, tol, bool(pct), context, _BYTES[unit.group(1)] if unit else 1.0))
    return out


def numbers_in_text(text: str) -> list[float]:
    """Every number in a source text (outputs, code, JSON), scaled where a suffix says so; signs dropped."""
    out = []
    for m in NUMBER.finditer(text.replace("_", "")):
        digits, suffix = m.group(1), m.group(2) or m.group(3) or ""
        try:
            out.append(_value(digits) * _SCALE.get(suffix, 1.0))
        except ValueError:
            continue
    return out


def numbers_in_json(obj) -> list[float]:
    """Every number in a parsed JSON value (and in its strings)."""
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [abs(float(obj))] if math.isfinite(obj) else []
    if isinstance(obj, str):
        return numbers_in_text(obj)
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in numbers_in_json(x)] + [v for k in obj for v in numbers_in_text(str(k))]
    if isinstance(obj, (list, tuple)):
        return [v for x in obj for v in numbers_in_json(x)]
    return []


class Sources:
    """A pool of source values, sorted, for the rounding match."""

    def __init__(self, values=()):
        self.values = sorted({round(v, 12) for v in values if math.isfinite(v)})

    def add(self, values) -> None:
        self.values = sorted(set(self.values) | {round(v, 12) for v in values if math.isfinite(v)})

    def _near(self, target: float, tol: float) -> bool:
        import bisect

        i = bisect.bisect_left(self.values, target - tol * (1 + 1e-9))
        return i < len(self.values) and self.values[i] <= target + tol * (1 + 1e-9)

    def backs(self, fig: Figure) -> bool:
        """Does a source value round to the figure? Percents may be written from fractions and vice versa."""
        candidates = [(fig.value, fig.tolerance)]
        if fig.unit != 1.0:
            candidates.append((fig.value * fig.unit, fig.tolerance * fig.unit))
        if fig.percent:
            candidates.append((fig.value / 100, fig.tolerance / 100))
        return any(self._near(v, t) for v, t in candidates)


# ---------------------------------------------------------------- sources ----
def _output_text(output) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    data = output.get("data", {})
    return "\n".join(str(data[k]) for k in ("text/plain", "text/html", "text/markdown") if k in data)


def notebook_sources(nb) -> list[float]:
    """Numbers in a notebook's stored outputs and in its code (configs such as lr=3e-3 are sources too)."""
    values: list[float] = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        values += numbers_in_text(cell.source)
        for output in cell.get("outputs", []):
            values += numbers_in_text(_output_text(output))
    return values


def notebook_prose(nb) -> str:
    return "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def results_files_read(nb, root: Path) -> list[Path]:
    """The benchmarks/results/*.json files a notebook's code names (it reads them, so it may quote them)."""
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    return [p for p in sorted((root / "benchmarks" / "results").glob("*.json")) if p.stem in code or p.name in code]


def results_sources(paths) -> list[float]:
    values: list[float] = []
    for path in paths:
        values += numbers_in_json(json.loads(Path(path).read_text()))
    return values


# ------------------------------------------------------------- literature ----
# Constants from the source material and the literature that prose may quote without a run. The model
# registry and hardware table of slm_lab.sizing (each entry with its source) are added to these.
LITERATURE: list[tuple[float, str]] = [
    (992, "OPT-175B trained on 992 A100 80GB GPUs (Zhang et al., 2022, section 2)"),
    (9e6, "~$9M of hardware for OPT-175B: 992 × ~$10k (course material)"),
    (100e6, "GPT-4 cost more than $100 million to train (OpenAI's CEO, Wired, April 2023)"),
    (1.76e12, "GPT-4 rumoured ~1.76T parameters (course material; not published)"),
    (5e9, "many SLMs are under 5 GB on disk (course material)"),
    (147e12, "OPT-175B reached 147 TFLOP/s per A100 (Zhang et al., 2022)"),
    (3.14e23, "GPT-3 training compute, 3.14e23 FLOPs (Brown et al., 2020, Table D.1)"),
    (300e9, "GPT-3 trained on 300B tokens (Brown et al., 2020)"),
    (20, "Chinchilla: about 20 training tokens per parameter (Hoffmann et al., 2022)"),
    (1.4e12, "Chinchilla 70B trained on 1.4T tokens (Hoffmann et al., 2022)"),
    (70e9, "Chinchilla has 70B parameters (Hoffmann et al., 2022)"),
    (1_115_394, "tiny-shakespeare's input.txt is 1,115,394 bytes (Karpathy's char-rnn)"),
    (50257, "GPT-2's vocabulary has 50,257 tokens (Radford et al., 2019)"),
    (19e12, "on-chip SRAM bandwidth ~19 TB/s on an A100 (Dao et al., 2022, FlashAttention, Figure 1)"),
    (1.5e12, "A100 HBM bandwidth ~1.5 TB/s as FlashAttention quotes it (Dao et al., 2022, Figure 1)"),
    (67e12, "H100 SXM: 67 TFLOP/s of plain float32 (NVIDIA H100 datasheet)"),
    (228e3, "an H100 SM has up to 228 KB of shared memory (NVIDIA H100 datasheet)"),
    # Number formats: definitions, not measurements.
    (23, "float32 has 23 mantissa bits (IEEE 754 binary32)"),
    (127, "int8 spans -128…127 (two's complement, 8 bits)"),
    (128, "int8 spans -128…127 (two's complement, 8 bits)"),
    (255, "a byte holds 0…255: byte-level BPE's first 256 ids (minbpe, GPT-2's byte-level BPE)"),
    (256, "byte-level BPE: 256 byte ids, so merge i gets id 256 + i (minbpe)"),
    (257, "byte-level BPE: the second merge gets id 257 (minbpe)"),
    (258, "byte-level BPE: the third merge gets id 258 (minbpe)"),
    (2.0**-8, "bfloat16 keeps 8 significant bits: relative resolution 2^-8 (bfloat16 format, Google Brain)"),
]


def literature_sources() -> list[float]:
    from dataclasses import asdict

    from ..sizing import HARDWARE, REGISTRY, claims

    values = [v for v, _ in LITERATURE]
    for card in REGISTRY.values() if isinstance(REGISTRY, dict) else REGISTRY:
        values += numbers_in_json(asdict(card))
    for hw in HARDWARE.values():
        values += numbers_in_json(asdict(hw))
    for c in claims():
        values += numbers_in_json([c.claim, c.stated])
    return values


# ------------------------------------------------------------- documents ----
@dataclass
class Report:
    document: str
    figures: list[Figure]
    unbacked: list[Figure]


def _read(path: Path):
    import nbformat

    return nbformat.read(path, as_version=4)


def check_notebook(path: Path, root: Path, literature: list[float] | None = None) -> Report:
    """A notebook's prose against its own stored outputs and code, the results files it reads, the literature."""
    nb = _read(path)
    pool = Sources((literature if literature is not None else literature_sources()) + notebook_sources(nb)
                   + results_sources(results_files_read(nb, root)))
    figures = numbers_in_prose(notebook_prose(nb))
    return Report(str(path.relative_to(root)), figures, [f for f in figures if not pool.backs(f)])


def check_slides(path: Path, root: Path, literature: list[float] | None = None) -> Report:
    """A deck against the lectures and labs of its module and the ones before (outputs and code: a deck is
    shown after its module), the results files and the literature."""
    module = path.name[:2]
    values = (literature if literature is not None else literature_sources()) + \
        results_sources(sorted((root / "benchmarks" / "results").glob("*.json")))
    for nb_path in executed_notebooks(root):
        if nb_path.name[:2] <= module:
            values += notebook_sources(_read(nb_path))
    pool = Sources(values)
    figures = numbers_in_prose(path.read_text(encoding="utf-8"))
    return Report(str(path.relative_to(root)), figures, [f for f in figures if not pool.backs(f)])


def check_readme(root: Path, literature: list[float] | None = None) -> Report:
    """The README against the runs: a line that names its source ("notebook 06", `benchmarks/deploy.py`)
    is checked against that source alone; any other line against every notebook and results file."""
    lit = literature if literature is not None else literature_sources()
    results = sorted((root / "benchmarks" / "results").glob("*.json"))
    notebooks = {p.name[:2]: p for p in sorted((root / "notebooks").glob("*.ipynb"))}
    everything = Sources(lit + results_sources(results)
                         + [v for p in executed_notebooks(root) for v in notebook_sources(_read(p))])
    figures, unbacked = [], []
    for line in (root / "README.md").read_text(encoding="utf-8").splitlines():
        named_nb = re.findall(r"notebook (\d\d)\b", line)
        named_bench = re.findall(r"benchmarks/(\w+)\.py", line)
        pool = everything
        if named_nb or named_bench:
            values = list(lit)
            for nn in named_nb:
                if nn in notebooks:
                    values += notebook_sources(_read(notebooks[nn]))
            for name in named_bench:
                values += results_sources([p for p in results if p.stem.startswith(name)])
            pool = Sources(values)
        for fig in numbers_in_prose(line):
            figures.append(fig)
            if not pool.backs(fig):
                unbacked.append(fig)
    return Report("README.md", figures, unbacked)


def check_course(root: Path) -> list[Report]:
    """Every notebook, deck and the README (what tests/test_claims.py asserts, in one call)."""
    lit = literature_sources()
    decks = sorted((root / "slides").glob("[0-9][0-9]_*.md"))
    return ([check_notebook(p, root, lit) for p in executed_notebooks(root)]
            + [check_slides(p, root, lit) for p in decks] + [check_readme(root, lit)])
