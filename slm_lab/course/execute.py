"""`slm-lab execute NOTEBOOK... [--profile full]`: run notebooks top to bottom and store their outputs;
`slm-lab execute --stale`: list the notebooks whose stored outputs are older than the package."""
from __future__ import annotations

import time
from pathlib import Path

from ..errors import SLMLabError


def stale_notebooks(paths) -> list[tuple[Path, str]]:
    """(path, reason) for each notebook whose stored outputs do not come from the package as it is."""
    import nbformat

    from .provenance import staleness

    out = []
    for path in paths:
        reason = staleness(nbformat.read(path, as_version=4))
        if reason:
            out.append((Path(path), reason))
    return out


def run(args) -> int:
    from .notebooks import ROOT, execute

    if args.stale:
        paths = args.notebooks or sorted([*(ROOT / "notebooks").glob("*.ipynb"), *(ROOT / "solutions").glob("*.ipynb")])
        stale = stale_notebooks(paths)
        for path, reason in stale:
            print(f"stale  {path}: {reason}")
        print(f"{len(stale)} of {len(paths)} notebooks are stale" + ("; re-execute them with `slm-lab execute PATH...`."
                                                                     if stale else "."))
        return 1 if stale else 0
    if not args.notebooks:
        raise SLMLabError("name the notebooks to execute (or --stale to list the stale ones).")
    for path in args.notebooks:
        if not Path(path).is_file():
            raise SLMLabError(f"no notebook at {path}; check the path.")
    for path in args.notebooks:
        t0 = time.perf_counter()
        execute(path, profile=args.profile, timeout=args.timeout)
        print(f"executed {path} ({args.profile} profile) in {time.perf_counter() - t0:.0f} s")
    return 0


def register(sub) -> None:
    p = sub.add_parser("execute", help="run notebooks top to bottom with a profile and store the outputs")
    p.add_argument("notebooks", nargs="*")
    p.add_argument("--stale", action="store_true",
                   help="list notebooks whose stored outputs are older than the package (exit 1 if any)")
    p.add_argument("--profile", default="full", choices=("smoke", "full"))
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    p.set_defaults(func=run)
