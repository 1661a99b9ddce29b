"""Dead code, found with vulture: report what nothing uses; exit 1 if anything (hack/test).

Each part of the repository is checked against the code that may use it:

- the product (operator/scapguard) against itself and what frameworks call
  (hack/vulture_allowlist.py): code only the tests use is dead product code;
- the dev environment (dev/scapguard_dev) against itself, the tests and the benchmarks, which
  it exists for. Only its own findings are reported: the tests are not checked.

vulture gives every unused function, class, method, attribute and variable 60% confidence,
an unused import 90% and unreachable code or an unused argument 100%: 60 reports them all.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from vulture import Vulture

ROOT = Path(__file__).resolve().parent.parent
ALLOWLIST = "hack/vulture_allowlist.py"
MIN_CONFIDENCE = 60
#: reported -> what else may use it
SCOPES = {
    "operator/scapguard": (ALLOWLIST,),
    "dev/scapguard_dev": ("tests", "bench", ALLOWLIST),
}


def unused(reported: str, users: tuple[str, ...]) -> list[str]:
    finder = Vulture()
    finder.scavenge([reported, *users])
    return [
        item.get_report()
        for item in finder.get_unused_code(min_confidence=MIN_CONFIDENCE)
        if Path(item.filename).resolve().is_relative_to(ROOT / reported)
    ]


def main() -> int:
    os.chdir(ROOT)
    found = [line for reported, users in SCOPES.items() for line in unused(reported, users)]
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
