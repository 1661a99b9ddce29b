"""Code shape: no function in the product is longer than MAX_LINES (issue 14).

A long function is split by what it does (plan and apply, parse and validate, one piece per
concern), not into numbered chunks. There is no allowlist: every function fits.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

PACKAGE: Final = Path(__file__).resolve().parents[2] / "operator" / "scapguard"
MAX_LINES: Final = 60

_Function = ast.FunctionDef | ast.AsyncFunctionDef


def function_lengths(source: str, path: str) -> dict[str, int]:
    """``path:qualified.name`` -> lines from ``def`` to the function's last line, for every
    function and method in ``source``, nested ones included (decorators not counted)."""
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, _Function):
                name = f"{prefix}{child.name}"
                end = child.end_lineno or child.lineno
                lengths[f"{path}:{name}"] = max(
                    lengths.get(f"{path}:{name}", 0), end - child.lineno + 1
                )
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source, filename=path), "")
    return lengths


def long_functions() -> dict[str, int]:
    found: dict[str, int] = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        path = file.relative_to(PACKAGE).as_posix()
        found.update(function_lengths(file.read_text(encoding="utf-8"), path))
    return {name: lines for name, lines in found.items() if lines > MAX_LINES}


def test_no_product_function_is_longer_than_the_limit() -> None:
    too_long = [f"{name} ({lines} lines)" for name, lines in sorted(long_functions().items())]
    assert not too_long, f"split these (at most {MAX_LINES} lines each): " + ", ".join(too_long)


def test_lengths_cover_methods_nested_and_async_functions() -> None:
    source = (
        "class A:\n"
        "    def m(self):\n"
        "        def inner():\n"
        "            return 1\n"
        "        return inner\n"
        "\n"
        "@decorated\n"
        "async def f():\n"
        "    pass\n"
    )
    assert function_lengths(source, "x.py") == {
        "x.py:A.m": 4,
        "x.py:A.m.inner": 2,
        "x.py:f": 2,
    }
