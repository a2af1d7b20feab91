"""`slm-lab slides [DECK...] [--out DIR]`: build the Markdown decks in slides/ into reveal.js HTML.

A deck is `slides/NN_name.md`:

    ---
    title: Why small language models
    ---
    # The first slide
    ---
    ## The second slide
    - a point, with inline math $O(T^2)$ and `code`
    Note:
    What the instructor says (press S in the browser for the speaker view).

- Front matter: `key: value` lines between the first two `---` lines; `title` is required.
- Slides are separated by a line that is exactly `---` (outside code fences); use `#`/`##` headings,
  not underlines. A line starting with `Note:` begins the slide's speaker notes.
- Math: `$...$` inline, `$$...$$` on its own line for display. It is drawn at build time as SVG by
  matplotlib's mathtext (no network, no JavaScript); a formula mathtext cannot read is shown as its
  TeX source and reported, never a failed build. Write money as `\\$10k`.
- Code fences are highlighted with Pygments when it is installed (plain monospace otherwise).

The HTML loads the vendored reveal.js under slides/vendor/ by relative paths, so a built deck opens
from disk with no network.
"""
from __future__ import annotations

import base64
import functools
import html
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_text
from ..errors import SLMLabError

VENDOR = Path("vendor") / "reveal.js"
STYLESHEETS = ("dist/reset.css", "dist/reveal.css", "dist/theme/white.css")
SCRIPTS = ("dist/reveal.js", "plugin/notes/notes.js")
FRONT_MATTER_KEYS = ("title",)          # the deck's title, shown in the browser tab
DECK_GLOB = "[0-9][0-9]_*.md"

_SEPARATOR = re.compile(r"^---[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_NOTE = re.compile(r"^Note:[ \t]?(.*)$")
_KEY_VALUE = re.compile(r"^([A-Za-z_][\w-]*):[ \t]*(.*?)[ \t]*$")
_MATH_FONT_PT = 20.0          # mathtext size; images are scaled in em, so this only sets the drawing grid
_MATH_COLOR = "#222"          # the white theme's text colour


@dataclass
class Slide:
    number: int                   # 1-based, as an instructor counts them
    line: int                     # line of the source where the slide starts
    body: str                     # Markdown shown on the slide
    notes: str = ""               # Markdown for the speaker notes


@dataclass
class Deck:
    path: Path
    meta: dict[str, str]
    slides: list[Slide] = field(default_factory=list)

    @property
    def title(self) -> str:
        return self.meta["title"]


# ------------------------------------------------------------------ parsing ----
def parse_deck(text: str, path: str | Path = "<deck>") -> Deck:
    """Split a deck's source into front matter and slides; malformed input raises SLMLabError naming file and slide."""
    path = Path(path)
    lines = text.splitlines()
    if not lines or not _SEPARATOR.match(lines[0]):
        raise SLMLabError(f"{path} does not start with front matter; begin it with a `---` line, "
                          "`title: ...` and another `---` line.")
    end = next((i for i in range(1, len(lines)) if _SEPARATOR.match(lines[i])), None)
    if end is None:
        raise SLMLabError(f"{path} has front matter that is never closed; add a `---` line after `title: ...`.")
    meta = _front_matter(lines[1:end], path)

    chunks: list[tuple[int, list[str]]] = [(end + 2, [])]   # (1-based start line, lines)
    fence, fence_slide = None, 0
    for i in range(end + 1, len(lines)):
        line = lines[i]
        if fence is None and _SEPARATOR.match(line):
            chunks.append((i + 2, []))
            continue
        fence, opened = _track_fence(line, fence)
        if opened:
            fence_slide = len(chunks)
        chunks[-1][1].append(line)
    if fence is not None:
        raise SLMLabError(f"slide {fence_slide} of {path} opens a code fence ({fence}) that is never closed; "
                          f"close it with {fence} before the next `---`.")

    deck = Deck(path, meta)
    for number, (start, chunk) in enumerate(chunks, start=1):
        body, notes = _split_notes(chunk)
        if not body.strip():
            what = "has only speaker notes" if notes.strip() else "is empty"
            raise SLMLabError(f"slide {number} of {path} (line {start}) {what}; put content between its "
                              "`---` lines or delete one of them.")
        deck.slides.append(Slide(number, start, body, notes))
    return deck


def _front_matter(lines: list[str], path: Path) -> dict[str, str]:
    meta: dict[str, str] = {}
    for k, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        m = _KEY_VALUE.match(line)
        if not m or not m.group(2):
            raise SLMLabError(f"{path} has malformed front matter at line {k} ({line.strip()!r}); "
                              "write `key: value` lines between the first two `---` lines.")
        key, value = m.group(1), m.group(2)
        if key not in FRONT_MATTER_KEYS:
            raise SLMLabError(f"{path} has an unknown front matter key {key!r} at line {k}; "
                              f"the keys are: {', '.join(FRONT_MATTER_KEYS)}.")
        if key in meta:
            raise SLMLabError(f"{path} sets front matter key {key!r} twice (line {k}); keep one.")
        meta[key] = value
    if "title" not in meta:
        raise SLMLabError(f"{path} has no `title: ...` in its front matter; add one.")
    return meta


def _track_fence(line: str, fence: str | None) -> tuple[str | None, bool]:
    """Follow ``` / ~~~ code fences so that `---` and `Note:` inside code stay code. Returns (fence, opened)."""
    m = _FENCE.match(line)
    if not m:
        return fence, False
    if fence is None:
        return m.group(1), True
    closes = m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line.strip().strip(fence[0])
    return (None if closes else fence), False


def _split_notes(chunk: list[str]) -> tuple[str, str]:
    fence = None
    for i, line in enumerate(chunk):
        if fence is None and (m := _NOTE.match(line)):
            return "\n".join(chunk[:i]), "\n".join([m.group(1), *chunk[i + 1:]])
        fence, _ = _track_fence(line, fence)
    return "\n".join(chunk), ""


# ---------------------------------------------------------------- rendering ----
@functools.lru_cache(maxsize=1024)
def tex_to_svg(tex: str) -> tuple[bytes, float, float] | None:
    """Draw TeX with matplotlib's mathtext → (SVG bytes, height, depth) in units of the font size; None if unreadable."""
    try:
        from matplotlib import figure, rc_context
        from matplotlib.font_manager import FontProperties
        from matplotlib.mathtext import MathTextParser
    except ImportError:
        return None
    with rc_context({"mathtext.fontset": "cm", "text.color": _MATH_COLOR, "svg.fonttype": "path",
                     "svg.hashsalt": "slm-lab"}):
        prop = FontProperties(size=_MATH_FONT_PT)
        try:
            width, height, depth, *_ = MathTextParser("path").parse(f"${tex}$", dpi=72, prop=prop)
        except ValueError:
            return None
        fig = figure.Figure(figsize=(width / 72.0, height / 72.0))
        fig.text(0, depth / height, f"${tex}$", fontproperties=prop)
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", dpi=72, transparent=True, metadata={"Date": None})   # no date: same bytes each build
    svg = re.sub(r"<\?xml.*?\?>|<!DOCTYPE.*?>|<metadata>.*?</metadata>|<!--.*?-->", "", buf.getvalue().decode(), flags=re.S)
    svg = re.sub(r"\s+", " ", svg).replace("> <", "><").strip()      # ~20% smaller, same drawing
    return svg.encode(), height / _MATH_FONT_PT, depth / _MATH_FONT_PT


def _math_html(tex: str, display: bool, unreadable: list[str]) -> str:
    drawn = tex_to_svg(tex.strip())
    if drawn is None:
        unreadable.append(tex)
        code = f'<code class="tex">{html.escape(tex)}</code>'
        return f'<div class="math-display">{code}</div>\n' if display else code
    svg, height, depth = drawn
    img = (f'<img class="math" alt="{html.escape(tex.strip())}" style="height:{height:.3f}em;'
           f'vertical-align:{-depth:.3f}em" src="data:image/svg+xml;base64,{base64.b64encode(svg).decode()}">')
    return f'<div class="math-display">{img}</div>\n' if display else img


def _markdown(deck: Deck, out_dir: Path, state: dict):
    """A mistune Markdown for one deck: tables, math as SVG, Pygments code, images checked on disk."""
    try:
        import mistune
        from mistune.renderers.html import HTMLRenderer
    except ImportError:
        raise SLMLabError("building slides needs mistune>=3; run `pip install 'mistune>=3'` "
                          "(it comes with nbconvert).") from None

    class SlideRenderer(HTMLRenderer):
        def block_code(self, code: str, info: str | None = None) -> str:
            lang = re.sub(r"[^\w+-]", "", (info or "").split(maxsplit=1)[0] if (info or "").strip() else "")
            return f'<pre><code class="language-{lang or "text"}">{_highlight(code, lang)}</code></pre>\n'

        def image(self, text: str, url: str, title: str | None = None) -> str:
            if re.match(r"^[a-z][a-z0-9+.-]*:", url, re.I):
                raise SLMLabError(f"slide {state['slide']} of {deck.path} loads the image {url} from the network; "
                                  "save it next to the deck so the slides work offline.")
            target = (deck.path.parent / url).resolve()
            if not target.is_file():
                raise SLMLabError(f"slide {state['slide']} of {deck.path} shows {url}, which does not exist; "
                                  "fix the path (it is relative to the deck).")
            return super().image(text, _relative_url(target, out_dir), title)

    renderer = SlideRenderer(escape=False)
    md = mistune.create_markdown(escape=False, renderer=renderer, plugins=["table", "strikethrough", "math"])
    renderer.register("inline_math", lambda _, tex: _math_html(tex, False, state["unreadable"]))
    renderer.register("block_math", lambda _, tex: _math_html(tex, True, state["unreadable"]))
    return md


def _highlight(code: str, lang: str) -> str:
    """Pygments spans for a known language, else the escaped code."""
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import get_lexer_by_name
        from pygments.util import ClassNotFound
    except ImportError:
        return html.escape(code)
    try:
        return highlight(code, get_lexer_by_name(lang), HtmlFormatter(nowrap=True)) if lang else html.escape(code)
    except ClassNotFound:
        return html.escape(code)


def _code_css() -> str:
    try:
        from pygments.formatters import HtmlFormatter
    except ImportError:
        return ""
    rules = HtmlFormatter(style="friendly").get_style_defs(".reveal pre code")
    return "\n".join(r for r in rules.splitlines() if not r.startswith(("pre {", "td.", "span.linenos")))


def _relative_url(target: Path, start: Path) -> str:
    try:
        return Path(os.path.relpath(target, start.resolve())).as_posix()
    except ValueError:   # Windows: another drive has no relative path
        raise SLMLabError(f"{start} is on another drive than {target}; choose an --out folder on the same drive.") from None


COURSE_CSS = """
:root { --r-main-font-size: 36px; --r-heading-text-transform: none; --r-block-margin: 16px;
        --r-code-font: "DejaVu Sans Mono", Menlo, Consolas, monospace; }
.reveal .slides { text-align: left; }
.reveal .slides section.title-slide { text-align: center; padding-top: 150px; }
.reveal h1 { font-size: 1.9em; } .reveal h2 { font-size: 1.35em; } .reveal h3 { font-size: 1.1em; }
.reveal ul, .reveal ol { display: block; margin-left: 1.1em; }
.reveal li { margin: 0.15em 0; }
.reveal pre { width: 100%; font-size: 0.55em; box-shadow: none; margin: 0.4em 0; }
.reveal pre code { background: #f6f8fa; padding: 0.6em 0.9em; line-height: 1.35; max-height: 560px; border-radius: 4px; }
.reveal code { font-family: var(--r-code-font); }
.reveal :not(pre) > code { background: #f1f3f5; padding: 0 0.2em; border-radius: 3px; font-size: 0.88em; }
.reveal table { font-size: 0.8em; margin: 0.4em 0; }
.reveal table th, .reveal table td { padding: 0.25em 0.7em; }
.reveal img.math { margin: 0; display: inline; border: 0; box-shadow: none; background: none; max-height: none; }
.reveal .math-display { text-align: center; margin: 0.5em 0; font-size: 1.15em; }
.reveal code.tex { color: #a00; }
.reveal blockquote { width: 90%; font-size: 0.9em; padding: 0.3em 0.8em; box-shadow: none; border-left: 4px solid #2a76dd; }
.reveal .small, .reveal small { font-size: 0.7em; }
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<meta name="generator" content="slm-lab slides">
<title>{title} | SLM Lab</title>
{links}
<style>{css}</style>
</head>
<body>
<div class="reveal"><div class="slides">
{sections}
</div></div>
{scripts}
<script>
Reveal.initialize({{ hash: true, slideNumber: "c/t", width: 1280, height: 720, margin: 0.05,
                    center: false, transition: "none", plugins: [RevealNotes] }});
</script>
</body>
</html>
"""


@dataclass
class BuiltDeck:
    path: Path                    # the HTML written
    slides: int
    unreadable_math: list[str]    # formulas shown as TeX source


def render_deck(deck: Deck, out_dir: str | Path, vendor_dir: str | Path) -> tuple[str, list[str]]:
    """The deck as one HTML page for out_dir, loading reveal.js from vendor_dir; returns (html, unreadable formulas)."""
    out_dir, vendor_dir = Path(out_dir), Path(vendor_dir)
    missing = [a for a in (*STYLESHEETS, *SCRIPTS) if not (vendor_dir / a).is_file()]
    if missing:
        raise SLMLabError(f"the vendored reveal.js file {vendor_dir / missing[0]} is missing; "
                          "restore slides/vendor/ from git.")
    base = _relative_url(vendor_dir.resolve(), out_dir)
    state: dict = {"slide": 0, "unreadable": []}
    md = _markdown(deck, out_dir, state)
    sections = []
    for slide in deck.slides:
        state["slide"] = slide.number
        cls = ' class="title-slide"' if slide.number == 1 else ""
        notes = f'\n<aside class="notes">\n{md(slide.notes)}</aside>' if slide.notes.strip() else ""
        sections.append(f'<section{cls} data-source-line="{slide.line}">\n{md(slide.body)}{notes}\n</section>')
    page = PAGE.format(
        title=html.escape(deck.title),
        links="\n".join(f'<link rel="stylesheet" href="{base}/{a}">' for a in STYLESHEETS),
        css=COURSE_CSS + _code_css(),
        sections="\n".join(sections),
        scripts="\n".join(f'<script src="{base}/{a}"></script>' for a in SCRIPTS))
    return page, state["unreadable"]


def build_deck(path: str | Path, out_dir: str | Path, vendor_dir: str | Path) -> BuiltDeck:
    """Parse a deck, render it and write out_dir/<deck name>.html (atomically: a failed build keeps the old file)."""
    path, out_dir = Path(path), Path(out_dir)
    if not path.is_file():
        raise SLMLabError(f"no deck at {path}; check the path.")
    deck = parse_deck(path.read_text(encoding="utf-8"), path)
    out_dir.mkdir(parents=True, exist_ok=True)
    page, unreadable = render_deck(deck, out_dir, vendor_dir)
    target = out_dir / f"{path.stem}.html"
    write_text(target, page)
    return BuiltDeck(target, len(deck.slides), unreadable)


# ---------------------------------------------------------------------- CLI ----
def slides_dir() -> Path:
    """slides/ of the course repository: under the current directory, else next to the slm_lab package."""
    for candidate in (Path.cwd() / "slides", Path(__file__).resolve().parents[2] / "slides"):
        if (candidate / VENDOR).is_dir():
            return candidate
    raise SLMLabError("found no slides/ folder with vendor/reveal.js here or next to the slm_lab package; "
                      "run `slm-lab slides` from the course repository.")


def find_decks(src: Path, names: Sequence[str] = ()) -> list[Path]:
    """Every src/NN_*.md, or the named ones: a path to a .md file, `00_why_slms` or just `00`."""
    available = sorted(src.glob(DECK_GLOB))
    if not names:
        if not available:
            raise SLMLabError(f"{src} has no decks (files named like 00_why_slms.md); write one first.")
        return available
    decks = []
    for name in names:
        if name.endswith(".md") and Path(name).is_file():
            decks.append(Path(name))
            continue
        stem = Path(name).name.removesuffix(".md")
        matches = [d for d in available if d.stem == stem or d.stem.startswith(stem + "_")]
        if len(matches) != 1:
            raise SLMLabError(f"no deck {name!r} in {src}; choose from {', '.join(d.stem for d in available) or 'none'}.")
        decks.append(matches[0])
    return decks


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def run(args) -> int:
    src = slides_dir()
    out = Path(args.out) if args.out else src / "_build"
    decks = find_decks(src, args.decks)
    for path in decks:   # every deck parses before any is written
        if path.is_file():
            parse_deck(path.read_text(encoding="utf-8"), path)
    for path in decks:
        built = build_deck(path, out, src / VENDOR)
        note = ""
        if built.unreadable_math:
            note = (f"; {len(built.unreadable_math)} formula(s) shown as TeX because mathtext cannot draw them, "
                    f"first: {built.unreadable_math[0]!r}")
        print(f"built {_shown(built.path)} ({built.slides} slides{note})")
    return 0


def register(sub) -> None:
    p = sub.add_parser("slides", help="build the Markdown decks in slides/ into reveal.js HTML (offline)")
    p.add_argument("decks", nargs="*", metavar="DECK", help="deck names (00, 00_why_slms) or .md paths; default: all")
    p.add_argument("--out", default=None, help="folder for the HTML (default slides/_build)")
    p.set_defaults(func=run)
