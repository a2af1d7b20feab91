"""A static scan of a submission's answer cells for constructs an instructor should look at: the `flags`
column of the gradebook.

A flag is not a verdict (grades come from the checks, judged by the grader, see `runner`): it points at
code that reaches into the kernel's machinery, the checks, or the package's own implementation of a task,
so an instructor can read that cell. Each flag names the construct and the cell: "get_ipython (cell 4)".
"""
from __future__ import annotations

import ast
import functools
import importlib
import re

# Modules whose import is worth a look in a lab answer.
MODULES = {"builtins", "importlib", "ctypes", "subprocess", "signal", "multiprocessing", "socket", "gc", "inspect",
           "sys"}
# Attribute chains worth a look, wherever they appear.
ATTRIBUTES = {"sys.modules", "os.kill", "os.killpg", "os.system", "os.fork", "os.setsid", "os.execv", "os.execl",
              "os.popen", "os.spawnl", "os.chmod"}
NAMES = {"get_ipython", "__builtins__", "__import__", "exec", "eval", "compile", "globals", "references_allowed"}
CHECK_MODULE = re.compile(r"m\d\d$")
# Modules a lab answer has no business changing: assigning to (or setattr on) anything reached from them.
GUARDED = ("torch", "math", "numpy", "slm_lab", "builtins")
# The names the course's notebooks use for modules, before any import in the cell says otherwise.
ALIASES = {"F": "torch.nn.functional", "nn": "torch.nn", "np": "numpy", "torch": "torch", "math": "math"}


@functools.cache
def forbidden_references(labs: tuple[str, ...] | None = None) -> frozenset[str]:
    """The dotted names the checks of `labs` ("02", ...; all labs when None) switch off while they run a
    student's code (`checks.forbids`)."""
    names: set[str] = set()
    for n in range(100):
        if labs is not None and f"{n:02d}" not in labs:
            continue
        try:
            mod = importlib.import_module(f"slm_lab.checks.m{n:02d}")
        except ImportError:
            continue
        for check in getattr(mod, "CHECKS", {}).values():
            names.update(getattr(check, "forbidden", ()))
    return frozenset(names)


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _parse(source: str) -> ast.AST | None:
    # IPython magics and shell escapes are not Python: blank them (keeping line numbers)
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def _aliases(tree: ast.AST) -> dict[str, str]:
    """name → the module (or module attribute) it stands for in this cell: the defaults, then its imports."""
    aliases = dict(ALIASES)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return aliases


def _resolved(node: ast.AST, aliases: dict[str, str]) -> str:
    dotted = _dotted(node)
    root, _, rest = dotted.partition(".")
    if root in aliases:
        return aliases[root] + ("." + rest if rest else "")
    return dotted


def _guarded(full: str) -> bool:
    return full.split(".")[0] in GUARDED or bool(CHECK_MODULE.fullmatch(full.split(".")[0]))


def cell_flags(source: str, forbidden: frozenset[str] | None = None) -> set[str]:
    """The flags of one answer cell's source (see the module docstring); `forbidden`: the package names the
    lab's checks refuse (default: every lab's)."""
    tree = _parse(source)
    if tree is None:
        return {"does not parse"} if source.strip() else set()
    forbidden = forbidden_references() if forbidden is None else forbidden
    aliases = _aliases(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in MODULES:
                    found.add(f"imports {a.name}")
                if a.name.startswith("slm_lab.checks.") and not CHECK_MODULE.search(a.name):
                    found.add(f"imports {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in MODULES:
                found.add(f"imports {node.module}")
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full in forbidden or a.name == "references_allowed" or node.module == "slm_lab.checks.remote":
                    found.add(f"imports {full}")
        elif isinstance(node, ast.Name) and node.id in NAMES:
            found.add(node.id)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and aliases.get(node.id) in forbidden:
            found.add(f"uses {aliases[node.id]}")
        elif isinstance(node, ast.Attribute):
            dotted, full = _dotted(node), _resolved(node, aliases)
            if dotted in ATTRIBUTES:
                found.add(dotted)
            if full in forbidden:
                found.add(f"uses {full}")
            root = dotted.split(".")[0]
            if CHECK_MODULE.fullmatch(root) and dotted.count(".") == 1 and not node.attr.startswith("check_") \
                    and (node.attr.startswith("_") or re.search("ref|answer", node.attr, re.I)):
                found.add(f"reads {root}.{node.attr}")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for t in targets:
                if isinstance(t, ast.Attribute) and _guarded(_resolved(t, aliases)):
                    found.add(f"assigns {_dotted(t)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr") \
                and node.args and _guarded(_resolved(node.args[0], aliases)):
            found.add(f"{node.func.id} on {_dotted(node.args[0])}")
        elif isinstance(node, (ast.ClassDef, ast.FunctionDef)) and CHECK_MODULE.fullmatch(node.name):
            found.add(f"defines {node.name}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "/proc" in node.value:
            found.add("/proc")
    return found


def flags(cells: list, labs: tuple[str, ...] | None = None) -> list[str]:
    """Flags of the answer cells, as "flag (cell K)", K counting every cell from 1; `cells` are (K, source) of
    the cells that are not checks; `labs`: the labs whose checks' refused names count (default: all)."""
    forbidden = forbidden_references(labs)
    out = []
    for k, source in cells:
        out += [f"{flag} (cell {k})" for flag in sorted(cell_flags(source, forbidden))]
    return out
