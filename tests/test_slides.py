"""Slides: every deck builds to reveal.js HTML that works offline; malformed decks get one clear error."""
from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from slm_lab import cli
from slm_lab.course import slides
from slm_lab.errors import SLMLabError

ROOT = Path(__file__).resolve().parents[1]
SLIDES = ROOT / "slides"
VENDOR = SLIDES / "vendor" / "reveal.js"
DECKS = sorted(SLIDES.glob("[0-9][0-9]_*.md"))


class Tags(HTMLParser):
    """Every start tag with its attributes, in order."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def all(self, tag: str, **attrs) -> list[dict]:
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]


def source_counts(text: str) -> tuple[int, int]:
    """(slides, notes) counted straight from the Markdown: `---` and `Note:` lines outside code fences."""
    separators, notes, in_code = 0, 0, False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_code = not in_code
        elif not in_code and line.rstrip() == "---":
            separators += 1
        elif not in_code and line.startswith("Note:"):
            notes += 1
    return separators - 2 + 1, notes      # two lines fence the front matter; n separators make n + 1 slides


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("slides")
    return {deck.stem: slides.build_deck(deck, out, VENDOR) for deck in DECKS}


def test_every_lecture_notebook_has_a_deck():
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert len(notebooks) >= 10, "the course has lecture notebooks 00-09"
    missing = [f"slides/{stem}.md" for stem in notebooks if not (SLIDES / f"{stem}.md").is_file()]
    assert missing == [], f"lecture notebooks without a deck: {', '.join(missing)}"


@pytest.mark.parametrize("deck", DECKS, ids=lambda d: d.stem)
def test_deck_builds_one_section_per_slide(deck, built):
    result = built[deck.stem]
    n_slides, n_notes = source_counts(deck.read_text(encoding="utf-8"))
    tags = Tags(result.path.read_text(encoding="utf-8"))
    assert result.slides == n_slides == len(tags.all("section"))
    assert len(tags.all("aside", **{"class": "notes"})) == n_notes
    assert 10 <= n_slides <= 16, "a lecture deck has 10-16 slides"
    assert result.unreadable_math == [], "every formula in a shipped deck should draw"


@pytest.mark.parametrize("deck", DECKS, ids=lambda d: d.stem)
def test_deck_ends_by_pointing_at_its_notebook_and_lab(deck):
    last = slides.parse_deck(deck.read_text(encoding="utf-8"), deck).slides[-1].body
    assert "In the notebook" in last
    assert f"notebooks/{deck.stem}.ipynb" in last and f"labs/{deck.stem}_lab.ipynb" in last


@pytest.mark.parametrize("deck", DECKS, ids=lambda d: d.stem)
def test_assets_are_vendored_and_nothing_loads_from_the_network(deck, built):
    page = built[deck.stem].path
    tags = Tags(page.read_text(encoding="utf-8"))
    refs = [a["src"] for a in tags.all("script") if "src" in a] + [a["href"] for a in tags.all("link")]
    refs += [a["src"] for a in tags.all("img")]
    assert len(refs) >= 5                                        # 3 stylesheets, reveal.js, the notes plugin
    css = []
    for ref in refs:
        assert not re.match(r"^(https?:)?//", ref), f"{ref} needs the network"
        if ref.startswith("data:"):
            continue
        path = (page.parent / ref).resolve()
        assert path.is_file(), f"{ref} is referenced by {page.name} but missing"
        assert VENDOR.resolve() in path.parents
        css += [path] if path.suffix == ".css" else []
    seen = set()
    while css:                                                   # follow @import and url(...) inside the CSS
        sheet = css.pop()
        if sheet in seen:
            continue
        seen.add(sheet)
        for ref in re.findall(r"url\(\s*['\"]?([^'\")]+)['\"]?\s*\)", sheet.read_text(encoding="utf-8")):
            if ref.startswith(("data:", "#")):
                continue
            assert not re.match(r"^(https?:)?//", ref), f"{sheet.name} loads {ref} from the network"
            target = (sheet.parent / ref.split("?")[0]).resolve()
            assert target.is_file(), f"{sheet.name} refers to {ref}, which is not vendored"
            css += [target] if target.suffix == ".css" else []
    assert (VENDOR / "LICENSE").is_file() and "MIT" in (VENDOR / "LICENSE").read_text()


def write(tmp_path: Path, text: str, name: str = "05_demo.md") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, words", [
    ("# no front matter\n", "does not start with front matter"),
    ("---\ntitle: x\n# a slide\n", "front matter that is never closed"),
    ("---\ntitle x\n---\n# a\n", "malformed front matter at line 2"),
    ("---\ntitle: x\ntheme: black\n---\n# a\n", "unknown front matter key 'theme' at line 3"),
    ("---\n\n---\n# a\n", "no `title: ...`"),
])
def test_malformed_front_matter_is_one_line_naming_the_file(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(SLMLabError) as exc:
        slides.build_deck(path, tmp_path / "out", VENDOR)
    msg = str(exc.value)
    assert words in msg and str(path) in msg and "\n" not in msg


@pytest.mark.parametrize("text, words", [
    ("---\ntitle: x\n---\n# a\n---\n\n---\n# c\n", "slide 2 of {path} (line 6) is empty"),
    ("---\ntitle: x\n---\n# a\n---\n# b\n---\n", "slide 3 of {path} (line 8) is empty"),
    ("---\ntitle: x\n---\n# a\n---\nNote: only notes\n", "slide 2 of {path} (line 6) has only speaker notes"),
    ("---\ntitle: x\n---\n# a\n---\n# b\n```python\nx = 1\n---\n", "slide 2 of {path} opens a code fence (```)"),
    ("---\ntitle: x\n---\n# a\n---\n![plot](missing.png)\n", "slide 2 of {path} shows missing.png, which does not exist"),
    ("---\ntitle: x\n---\n# a\n![plot](https://example.com/a.png)\n", "slide 1 of {path} loads the image https://example.com/a.png"),
])
def test_bad_slide_is_one_line_naming_file_and_slide(tmp_path, text, words):
    path = write(tmp_path, text)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "05_demo.html").write_text("the last good build")
    with pytest.raises(SLMLabError) as exc:
        slides.build_deck(path, tmp_path / "out", VENDOR)
    assert words.format(path=path) in str(exc.value) and "\n" not in str(exc.value)
    assert (tmp_path / "out" / "05_demo.html").read_text() == "the last good build"   # nothing saved is lost
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["05_demo.html"]          # no temp file left behind


def test_code_fences_keep_separators_notes_and_dollars(tmp_path):
    path = write(tmp_path, "---\ntitle: Fences & <tags>\n---\n# a\n```python\nx = 1\n---\nNote: still code\ny = '$5 and $6'\n```\n"
                           "costs \\$10k each ≈ \\$9.9M\nNote:\nsay *this*\n---\n# b\n")
    result = slides.build_deck(path, tmp_path, VENDOR)
    page = result.path.read_text(encoding="utf-8")
    assert result.slides == 2 and page.count("<section") == 2
    code = re.search(r"<pre><code class=\"language-python\">(.*?)</code></pre>", page, re.S).group(1)
    text = re.sub(r"<[^>]+>", "", code)
    assert "---" in text and "Note: still code" in text and "$5 and $6" in text
    assert "costs $10k each ≈ $9.9M" in page and 'class="math"' not in page
    assert re.search(r'<aside class="notes">\s*<p>say <em>this</em></p>', page)
    assert "<title>Fences &amp; &lt;tags&gt; | SLM Lab</title>" in page


def test_math_is_drawn_as_svg_and_unreadable_tex_is_shown_not_fatal(tmp_path):
    path = write(tmp_path, "---\ntitle: m\n---\n# a\ninline $\\frac{QK^\\top}{\\sqrt{d}}$ and $\\bad{x$\n\n"
                           "$$\\mathrm{softmax}(x)_i = \\frac{e^{x_i}}{\\sum_j e^{x_j}}$$\n")
    result = slides.build_deck(path, tmp_path, VENDOR)
    page = result.path.read_text(encoding="utf-8")
    assert result.unreadable_math == ["\\bad{x"]
    assert '<code class="tex">\\bad{x</code>' in page
    images = Tags(page).all("img", **{"class": "math"})
    assert [i["alt"] for i in images] == ["\\frac{QK^\\top}{\\sqrt{d}}", "\\mathrm{softmax}(x)_i = \\frac{e^{x_i}}{\\sum_j e^{x_j}}"]
    svg = ET.fromstring(base64.b64decode(images[0]["src"].split(",", 1)[1]))
    assert svg.tag.endswith("svg") and len(svg.findall(".//{http://www.w3.org/2000/svg}path")) >= 4   # Q, K, ⊤, d, √
    display = re.search(r'<div class="math-display"><img class="math"', page)
    assert display, "$$...$$ should be a centred display formula"


def test_cli_builds_every_deck_and_names_one(tmp_path, capsys):
    assert cli.main(["slides", "--out", str(tmp_path / "all")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(DECKS)
    for deck, line in zip(DECKS, lines):
        html = tmp_path / "all" / f"{deck.stem}.html"
        n_slides, _ = source_counts(deck.read_text(encoding="utf-8"))
        assert html.is_file() and line.startswith("built ") and f"({n_slides} slides)" in line
    first = (tmp_path / "all" / f"{DECKS[0].stem}.html").read_bytes()
    assert cli.main(["slides", DECKS[0].stem[:2], "--out", str(tmp_path / "one")]) == 0
    assert [p.name for p in (tmp_path / "one").iterdir()] == [f"{DECKS[0].stem}.html"]
    assert (tmp_path / "one" / f"{DECKS[0].stem}.html").read_bytes() == first   # same source, same bytes


def test_cli_bad_deck_is_one_line_and_exit_2(tmp_path, capsys):
    assert cli.main(["slides", "99_nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no deck '99_nope'" in err and "00_why_slms" in err
    bad = write(tmp_path, "---\ntitle: x\n---\n# a\n---\n---\n# c\n")
    assert cli.main(["slides", str(DECKS[0]), str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "slide 2 of" in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), "a bad deck stops the build before anything is written"


def test_a_failed_write_keeps_the_last_good_build(tmp_path, monkeypatch):
    path = write(tmp_path, "---\ntitle: x\n---\n# new\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "05_demo.html").write_text("the last good build")

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(slides.os, "replace", crash)
    with pytest.raises(OSError):
        slides.build_deck(path, out, VENDOR)
    assert (out / "05_demo.html").read_text() == "the last good build"
    assert [p.name for p in out.iterdir()] == ["05_demo.html"]


def test_a_local_image_is_linked_relative_to_the_output(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "plot.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    path = write(tmp_path, "---\ntitle: x\n---\n# a\n![loss curve](img/plot.svg)\n")
    result = slides.build_deck(path, tmp_path / "build" / "html", VENDOR)
    (img,) = Tags(result.path.read_text(encoding="utf-8")).all("img")
    assert img["src"] == "../../img/plot.svg" and img["alt"] == "loss curve"
    assert (result.path.parent / img["src"]).resolve() == (tmp_path / "img" / "plot.svg").resolve()
