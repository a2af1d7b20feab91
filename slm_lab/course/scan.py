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
              "os.popen", "os.spawnl", "os.chmod", "os.remove", "os.unlink", "shutil.rmtree",
              "F.scaled_dot_product_attention", "torch.nn.functional.scaled_dot_product_attention",
              "nn.RMSNorm", "torch.nn.RMSNorm", "F.rms_norm", "torch.nn.functional.rms_norm",
              "nn.MultiheadAttention", "torch.nn.MultiheadAttention"}
NAMES = {"get_ipython", "__builtins__", "__import__", "exec", "eval", "compile", "globals", "setattr", "delattr",
         "references_allowed"}
CHECK_MODULE = re.compile(r"m\d\d$")


@functools.lru_cache(maxsize=1)
def forbidden_references() -> frozenset[str]:
    """Every dotted name some check switches off while it runs a student's code (`checks.forbids`)."""
    names: set[str] = set()
    for n in range(100):
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


def cell_flags(source: str) -> set[str]:
    """The flags of one answer cell's source (see the module docstring)."""
    tree = _parse(source)
    if tree is None:
        return {"does not parse"} if source.strip() else set()
    forbidden = forbidden_references()
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
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted in ATTRIBUTES:
                found.add(dotted)
            root = dotted.split(".")[0]
            full = "slm_lab." + dotted.split(".", 1)[-1] if root == "slm_lab" else ""
            if full in forbidden:
                found.add(f"uses {full}")
            if CHECK_MODULE.fullmatch(root) and "." in dotted and not node.attr.startswith("check_") \
                    and (node.attr.startswith("_") or "ref" in node.attr.lower() or node.attr.isupper()):
                found.add(f"reads {root}.{node.attr}")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for t in targets:
                dotted = _dotted(t)
                if "." in dotted and dotted.split(".")[0] in ("torch", "F", "nn", "math", "np", "numpy", "slm_lab") \
                        or CHECK_MODULE.fullmatch(dotted.split(".")[0]):
                    found.add(f"assigns {dotted}")
        elif isinstance(node, ast.ClassDef | ast.FunctionDef) and CHECK_MODULE.fullmatch(node.name):
            found.add(f"defines {node.name}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "/proc" in node.value:
            found.add("/proc")
    return found


def flags(cells: list) -> list[str]:
    """Flags of the answer cells, as [(flag) (cell K)], K counting every cell from 1; `cells` are
    (K, source) of the cells that are not checks."""
    out = []
    for k, source in cells:
        out += [f"{flag} (cell {k})" for flag in sorted(cell_flags(source))]
    return out
