"""The README's main job, run as a newcomer would (minus the wait for Ctrl-C)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_demo_scans_denies_and_refuses_the_vulnerable_image() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "scapguard.devcluster.cli", "demo", "--no-wait"],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    rows = {line.split()[1]: line.split() for line in out.splitlines() if "webapp:1." in line}
    # NAME IMAGE RESULT CRITICAL HIGH MEDIUM LOW FAILED-RULES DENIED AGE
    assert rows["webapp:1.0"][2:9] == ["Fail", "1", "1", "1", "1", "0", "true"], out
    assert rows["webapp:1.1"][2:9] == ["Pass", "0", "0", "0", "0", "0", "false"], out
    assert re.search(r"deny-execution\}\n+true\n", out), out
    assert '"compliant":false' in out
    assert 'admission webhook "pod-images.scapguard.io" denied the request' in out
    # The patched image runs as a real pod (kubelet, containerd) and its log is shown.
    assert "webapp running as uid 65532" in out
    assert "Traceback" not in proc.stderr, proc.stderr
