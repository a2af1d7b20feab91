"""Every course notebook follows the conventions: badge for its own path, the setup cell, stored
outputs from a clean top-to-bottom run (lectures and solutions), and labs in sync with solutions."""
from pathlib import Path

import nbformat
import pytest

from slm_lab.course.notebooks import ROOT, badge_markdown, check_cells, setup_extras, setup_source

LECTURES = sorted((ROOT / "notebooks").glob("*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
LABS = sorted((ROOT / "labs").glob("*.ipynb"))
ALL = LECTURES + SOLUTIONS + LABS


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("path", ALL, ids=rel)
def test_badge_and_setup_cell(path):
    nb = nbformat.read(path, as_version=4)
    assert badge_markdown(rel(path)) in nb.cells[0].source, "the Colab badge must point at the notebook itself"
    setup = nb.cells[1]
    assert setup.cell_type == "code" and setup.source == setup_source(setup_extras(setup.source)), (
        "the setup cell is not the one slm_lab.course.notebooks.setup_source writes: run "
        "`python -c 'from slm_lab.course.notebooks import restamp_setup; restamp_setup()'`")


@pytest.mark.parametrize("path", LECTURES + SOLUTIONS, ids=rel)
def test_stored_outputs_come_from_a_clean_run(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    counts = [c.execution_count for c in code]
    assert None not in counts, "every code cell is executed in the committed notebook"
    assert counts == sorted(counts) and counts[0] == 1, "cells executed in order, from a fresh kernel"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"stored error output: {errors[0].get('ename')}"


@pytest.mark.parametrize("path", SOLUTIONS, ids=rel)
def test_solutions_have_checks_with_ids_and_points(path):
    nb = nbformat.read(path, as_version=4)
    checks = check_cells(nb)
    assert checks, "a lab has at least one check cell"
    ids = [c.metadata["slm_lab"]["check"] for c in checks]
    assert len(ids) == len(set(ids)), "check ids are unique"
    prefix = path.name[:2]
    assert all(i.startswith(prefix + ".") for i in ids)
    assert all(c.metadata["slm_lab"]["points"] > 0 for c in checks)
    assert any("### BEGIN SOLUTION" in c.source for c in nb.cells if c.cell_type == "code")


def test_every_solution_has_a_lab_and_a_lecture():
    assert [p.name for p in LABS] == [p.name for p in SOLUTIONS]
    lectures = {p.stem for p in LECTURES}
    assert all(p.stem.removesuffix("_lab") in lectures for p in SOLUTIONS)


def test_readme_links_and_badges_point_at_files_that_exist():
    import re

    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(((?:notebooks|labs|solutions|slides)/[^)#]+|[A-Z]+\.md)\)", readme)
    assert links
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
    for path in LECTURES + LABS:
        assert badge_markdown(rel(path)) in readme, f"README has no Colab badge for {rel(path)}"


@pytest.mark.parametrize("path", LECTURES + SOLUTIONS, ids=rel)
def test_stored_outputs_come_from_the_package_as_it_is(path):
    from slm_lab.course.provenance import staleness

    reason = staleness(nbformat.read(path, as_version=4))
    assert reason is None, f"{rel(path)} is stale: {reason}; re-execute it with `slm-lab execute {rel(path)}`"


def test_the_instructors_timings_are_the_recorded_run_times():
    from slm_lab.course.execute import TIMINGS_BEGIN, TIMINGS_END, timings_table

    text = (ROOT / "INSTRUCTORS.md").read_text()
    assert TIMINGS_BEGIN in text and TIMINGS_END in text, "INSTRUCTORS.md needs its generated timings block"
    block = text.split(TIMINGS_BEGIN, 1)[1].split(TIMINGS_END, 1)[0].strip()
    assert block == timings_table(LECTURES + SOLUTIONS), \
        "INSTRUCTORS.md's timings differ from the notebooks' stamps: paste `slm-lab execute --timings` there"
