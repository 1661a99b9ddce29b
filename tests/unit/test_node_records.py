"""Node records: what a local node changed on the host, undone after its owner died."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scapguard_dev import node
from scapguard_dev.node import NodeRecord, clean_stale_nodes, node_records, read_sysctls


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(node, "STATE_DIR", tmp_path / "state")
    return tmp_path / "state"


def record(netns: str, pid: int, start: str, root: Path) -> NodeRecord:
    return NodeRecord(netns, str(root), f"/{netns}", pid, start, read_sysctls())


def test_a_record_is_alive_while_its_owner_runs(tmp_path: Path) -> None:
    me = os.getpid()
    mine = record("sg-mine", me, node._start_time(me) or "", tmp_path)
    mine.save()
    assert node_records() == [mine]
    assert mine.alive()
    # Same pid, another start time: the pid was reused, the owner is gone.
    assert not record("sg-old", me, "1", tmp_path).alive()
    mine.forget()
    assert node_records() == []


def test_stale_records_are_undone_and_live_ones_kept(tmp_path: Path, state_dir: Path) -> None:
    me = os.getpid()
    live = record("sg-live", me, node._start_time(me) or "", tmp_path / "live")
    stale = record("sg-stale", me, "1", tmp_path / "stale")
    live.save()
    stale.save()
    (state_dir / "garbage.json").write_text("{not json")
    clean_stale_nodes()
    names = [r.netns for r in node_records()]
    assert names == ["sg-live"]
    # A live node remains: the host's sysctls are left to it.
    assert read_sysctls() == live.sysctls
