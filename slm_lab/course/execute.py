"""`slm-lab execute NOTEBOOK... [--profile full]`: run notebooks top to bottom and store their outputs."""
from __future__ import annotations

import time
from pathlib import Path

from ..errors import SLMLabError


def run(args) -> int:
    from .notebooks import execute

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
    p.add_argument("notebooks", nargs="+")
    p.add_argument("--profile", default="full", choices=("smoke", "full"))
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    p.set_defaults(func=run)
