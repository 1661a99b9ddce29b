"""Code shape: no function in the product is longer than MAX_LINES (issue 14).

A long function is split by what it does (plan and apply, parse and validate, one piece per
concern), not into numbered chunks. LONG_FOR_NOW names the few still being split, each with
why; an entry whose function is short again (or gone) fails too, so the list cannot go stale.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

PACKAGE: Final = Path(__file__).resolve().parents[2] / "operator" / "scapguard"
MAX_LINES: Final = 60

#: ``path:qualified.name`` (path under operator/scapguard) -> why it may be long for now. Only
#: for the reconcile functions whose split is under way elsewhere.
LONG_FOR_NOW: Final = {
    "reconcile/verdicts.py:conditions_for": "being split in issue 14's reconcile part",
    "reconcile/ingest.py:ingest": "being split in issue 14's reconcile part",
    "reconcile/queue.py:start_attempt": "being split in issue 14's reconcile part",
    "reconcile/scanpolicy.py:_rescans": "being split in issue 14's reconcile part",
}

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
    too_long = [
        f"{name} ({lines} lines)"
        for name, lines in sorted(long_functions().items())
        if name not in LONG_FOR_NOW
    ]
    assert not too_long, f"split these (at most {MAX_LINES} lines each): " + ", ".join(too_long)


def test_every_allowed_long_function_is_still_long() -> None:
    long = long_functions()
    stale = [name for name in sorted(LONG_FOR_NOW) if name not in long]
    assert not stale, (
        f"no longer over {MAX_LINES} lines, or gone: remove from LONG_FOR_NOW: " + ", ".join(stale)
    )


def test_only_reconcile_functions_may_be_long_for_now() -> None:
    others = [name for name in sorted(LONG_FOR_NOW) if not name.startswith("reconcile/")]
    assert not others, "split these instead of allowing them: " + ", ".join(others)


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
