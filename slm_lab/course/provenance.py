"""Where a notebook's stored outputs came from: the profile and the exact `slm_lab` code it ran.

`slm-lab execute` stamps each notebook it runs with {"profile", "modules", "sha256", "per_module"} in its
metadata: the package modules the notebook imports (directly, and through the package's own imports),
and a hash of what their code does (docstrings, comments, type hints and import order do not count)
and of the package data they read — per module too, to name what changed.
A notebook is *stale* when that hash no longer matches the package as it is, or when its outputs are
not from the `full` profile; `slm-lab execute --stale` lists them and `tests/test_notebooks_meta.py`
fails on any.

The import graph is read statically (ast), so finding what a notebook depends on runs none of its code.
"""
from __future__ import annotations

import ast
import hashlib
from pathlib import Path
from typing import Any

PACKAGE = "slm_lab"
STAMP_KEY = "slm_lab"
# Package data a module reads: its bytes count as that module's source.
DATA_FILES = {"slm_lab.data": ("corpora",)}


def package_root() -> Path:
    return Path(__file__).resolve().parents[1]


def _module_file(name: str, root: Path) -> Path | None:
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    if len(parts) == 1:
        return root / "__init__.py"
    rel = Path(*parts[1:])
    for candidate in (root / rel.with_suffix(".py"), root / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports_of(tree: ast.AST, current: str, is_package: bool, root: Path) -> set[str]:
    """The slm_lab modules an AST imports (`from slm_lab import x` counts x when x is a module)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            if node.level:                                   # relative: resolve against the current module
                base = current.split(".") if is_package else current.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != PACKAGE:
                continue
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names if _module_file(f"{module}.{a.name}", root)}
    return {m for m in found if _module_file(m, root)}


def _with_parents(names: set[str]) -> set[str]:
    """Importing slm_lab.a.b runs slm_lab/__init__.py and slm_lab/a/__init__.py too."""
    out = set(names)
    for name in names:
        parts = name.split(".")
        out |= {".".join(parts[:i]) for i in range(1, len(parts))}
    return out


def dependencies(code: str, root: Path | None = None) -> list[str]:
    """Every slm_lab module that running `code` imports, following the package's own imports."""
    root = root or package_root()
    todo = _with_parents(_imports_of(ast.parse(code), "__main__", False, root))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name, root)
        assert path is not None
        tree = ast.parse(path.read_text(encoding="utf-8"))
        todo |= _with_parents(_imports_of(tree, name, path.name == "__init__.py", root)) - seen
    return sorted(seen)


def _is_import(node: ast.stmt) -> bool:
    return isinstance(node, (ast.Import, ast.ImportFrom))


class _Behaviour(ast.NodeTransformer):
    """Drop what cannot change a result: docstrings and type annotations; put runs of imports in order."""

    def _body(self, body: list) -> list:
        first = body[0] if body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            body = body[1:] or [ast.Pass()]
        out, run = [], []
        for stmt in body:
            if _is_import(stmt):
                run.append(stmt)
                continue
            out += sorted(run, key=ast.dump)
            run = []
            out.append(stmt)
        return out + sorted(run, key=ast.dump)

    def generic_visit(self, node):
        super().generic_visit(node)
        if hasattr(node, "body") and isinstance(node.body, list) and not isinstance(node, ast.Lambda):
            node.body = self._body(node.body)
        return node

    def visit_arg(self, node: ast.arg):
        node.annotation = None
        return node

    def visit_FunctionDef(self, node):
        node.returns = None
        return self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_AnnAssign(self, node: ast.AnnAssign):
        if node.value is None:                       # a bare annotation (dataclass field without default)
            return ast.Expr(ast.Name(id=ast.unparse(node.target)))
        return ast.Assign(targets=[node.target], value=node.value)


def behaviour(source: str) -> str:
    """The module's code as it runs: ast.dump without docstrings, annotations, line numbers or import order.

    So a comment, docstring, type hint or import-sorting change (what a linter asks for) leaves the
    notebooks that import the module fresh; any change to what the code does makes them stale.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    return ast.dump(_Behaviour().visit(tree), include_attributes=False)


def fingerprint(modules: list[str], root: Path | None = None) -> str:
    """SHA-256 over the modules' names and behaviour (see `behaviour`), and the package data they read."""
    root = root or package_root()
    h = hashlib.sha256()
    for name in sorted(modules):
        path = _module_file(name, root)
        code = behaviour(path.read_text(encoding="utf-8")) if path else "<missing>"
        h.update(name.encode() + b"\0" + code.encode() + b"\0")
        for folder in DATA_FILES.get(name, ()):
            for f in sorted((root / folder).rglob("*")):
                if f.is_file():
                    h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def notebook_code(nb) -> str:
    """The notebook's code cells as one Python text (IPython magics and shell lines dropped)."""
    lines = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            lines += [line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    return "\n".join(lines)


def stamp(nb, profile: str, root: Path | None = None, seconds: float | None = None) -> dict:
    """Record in nb.metadata what the notebook's outputs were computed with (and how long the run took);
    return the record."""
    modules = dependencies(notebook_code(nb), root)
    record: dict[str, Any] = {"profile": profile, "modules": modules, "sha256": fingerprint(modules, root),
              "per_module": {m: fingerprint([m], root)[:16] for m in modules}}
    if seconds is not None:
        record["seconds"] = round(seconds, 1)
    nb.metadata[STAMP_KEY] = record
    return record


def staleness(nb, root: Path | None = None) -> str | None:
    """Why the notebook's stored outputs do not come from the package as it is, or None when they do."""
    record = nb.metadata.get(STAMP_KEY)
    if not isinstance(record, dict) or "sha256" not in record:
        return "never executed with `slm-lab execute` (no provenance stamp)"
    if record.get("profile") != "full":
        return f"its outputs are from the {record.get('profile')!r} profile, not 'full'"
    modules = dependencies(notebook_code(nb), root)
    if modules != record.get("modules"):
        return "it imports other slm_lab modules than when it was executed"
    if fingerprint(modules, root) != record["sha256"]:
        changed = [m for m in modules if fingerprint([m], root)[:16] != record.get("per_module", {}).get(m)]
        detail = f" (e.g. {', '.join(changed[:3])})" if record.get("per_module") else ""
        return f"slm_lab changed since it was executed{detail}"
    return None
