"""The README's main job, run as a newcomer would (minus the wait for Ctrl-C)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def run_demo(timeout: float = 540) -> subprocess.CompletedProcess[str]:
    """``scapguard-devcluster demo --no-wait``; on a timeout or an interrupted test session
    it gets SIGTERM first, so it stops its cluster and gives the host back its settings."""
    argv = [sys.executable, "-m", "scapguard_dev.cli", "demo", "--no-wait"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as demo:
        try:
            out, err = demo.communicate(timeout=timeout)
        except BaseException:
            demo.send_signal(signal.SIGTERM)
            try:
                demo.communicate(timeout=60)
            finally:
                demo.kill()
            raise
    return subprocess.CompletedProcess(argv, demo.returncode, out, err)


def test_demo_scans_denies_and_refuses_the_vulnerable_image() -> None:
    proc = run_demo()
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
