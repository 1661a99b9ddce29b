"""Benchmark: scapguard-scan's phases against the same steps run by hand.

One image (the debootstrap Debian 12 minbase fixture, through the local registry), one content
set (a synthetic OVAL feed with a definition per installed package and version, plus the SSG
Debian 12 datastream and its ``standard`` profile). For each of N rounds:

* scapguard-scan, as the non-root scanning user in its user namespace: per-phase times from the
  result (pull, unpack = layer inspection + umoci + symlink containment + OS detection,
  content = checks of the feed and datastream, oscap = canary + oval eval + xccdf eval,
  parse) and the wall time of the whole command;
* by hand, as root: ``skopeo copy``, ``umoci unpack``, ``oscap oval eval`` + ``oscap xccdf
  eval`` (clean APT_CONFIG), and parsing both results with scapguard's parsers.

Prints medians and the ratio scanner/by-hand per phase and in total. Needs root (it creates the
scanning user like the tests do). Run: ``.venv/bin/python bench/scan_phases.py [ROUNDS]``.

``--in-pod``: the scanner as it ships instead, in scanner Jobs of scapguard installed with Helm on
the local real-node cluster (scanner image, user-namespace pods, one scan at a time): the phase
times come from the stored results of ROUNDS scans of the same image (one policy each). By hand
stays on the host, with the host's tools (their versions are printed: the image's oscap is newer).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client as kube_client

from scapguard.api.constants import RESULT_KEY
from scapguard.api.naming import result_config_map_name
from scapguard.results.oval import parse_oval_results
from scapguard.results.xccdf import parse_xccdf_results
from scapguard_dev.cluster import DevCluster, running_cluster, wait_for
from scapguard_dev.content import ssg_debian_content
from scapguard_dev.fixtureimages import FixtureImages
from scapguard_dev.helminstall import install_scapguard
from scapguard_dev.imagestreams import tag_image
from scapguard_dev.registry import Registry
from scapguard_dev.scannerenv import ensure_scanner_venv
from scapguard_dev.scanuser import ensure_scan_user

PROFILE = "xccdf_org.ssgproject.content_profile_standard"

PHASES = ("pull", "unpack", "content", "oscap", "parse")


def ensure_user() -> pwd.struct_passwd:
    return pwd.getpwnam(ensure_scan_user().name)


def synthetic_feed(rootfs: Path, dest: Path) -> int:
    """One vulnerable-looking definition per installed package (true: fixed version 99:0)."""
    status = (rootfs / "var/lib/dpkg/status").read_text(encoding="utf-8")
    names = [
        line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("Package:")
    ]
    ns = "http://oval.mitre.org/XMLSchema/oval-definitions-5"
    parts = [
        f'<?xml version="1.0"?>\n<oval_definitions xmlns="{ns}" '
        f'xmlns:oval="http://oval.mitre.org/XMLSchema/oval-common-5" xmlns:l="{ns}#linux">'
        "<generator><oval:schema_version>5.11.2</oval:schema_version>"
        "<oval:timestamp>2024-01-01T00:00:00</oval:timestamp></generator><definitions>"
    ]
    tests, objects, states = [], [], []
    for i, name in enumerate(names, start=1):
        parts.append(
            f'<definition id="oval:org.debian:def:{i}" version="1" class="vulnerability">'
            f"<metadata><title>CVE-2099-{i:05d} {name}</title><description>x</description>"
            f'<reference source="CVE" ref_id="CVE-2099-{i:05d}"/></metadata>'
            f'<criteria><criterion test_ref="oval:org.debian:tst:{i}"/></criteria></definition>'
        )
        tests.append(
            f'<l:dpkginfo_test id="oval:org.debian:tst:{i}" version="1" check="all" '
            f'check_existence="at_least_one_exists" comment="{name}">'
            f'<l:object object_ref="oval:org.debian:obj:{i}"/>'
            f'<l:state state_ref="oval:org.debian:ste:{i}"/></l:dpkginfo_test>'
        )
        objects.append(
            f'<l:dpkginfo_object id="oval:org.debian:obj:{i}" version="1">'
            f"<l:name>{name}</l:name></l:dpkginfo_object>"
        )
        states.append(
            f'<l:dpkginfo_state id="oval:org.debian:ste:{i}" version="1">'
            '<l:evr datatype="debian_evr_string" operation="less than">99:0</l:evr>'
            "</l:dpkginfo_state>"
        )
    parts += [
        "</definitions><tests>",
        *tests,
        "</tests><objects>",
        *objects,
        "</objects><states>",
        *states,
        "</states></oval_definitions>\n",
    ]
    dest.write_text("".join(parts), encoding="utf-8")
    dest.chmod(0o644)
    return len(names)


def run(
    cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run a fixed command line of this script (the tools of the scan, by name)."""
    return subprocess.run(  # noqa: S603 - argument lists built here
        cmd, capture_output=True, timeout=1800, env=env, cwd=cwd, check=False
    )


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.monotonic()
    proc = run(cmd, env)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {proc.stderr.decode(errors='replace')}")
    return time.monotonic() - start


def by_hand(image: str, work: Path, feed: Path, ds: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    out["pull"] = timed(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            f"docker://{image}",
            f"oci:{work / 'oci'}:img",
        ]
    )
    out["unpack"] = timed(
        ["umoci", "unpack", "--image", f"{work / 'oci'}:img", str(work / "bundle")]
    )
    (work / "apt.conf.d").mkdir()
    (work / "apt.conf").write_text(
        f'Dir::Etc::main "/dev/null";\nDir::Etc::parts "{work / "apt.conf.d"}";\n',
        encoding="utf-8",
    )
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(work),
        "APT_CONFIG": str(work / "apt.conf"),
        "OSCAP_PROBE_ROOT": str(work / "bundle" / "rootfs"),
    }
    start = time.monotonic()
    timed(
        [
            "oscap",
            "oval",
            "eval",
            "--results",
            str(work / "oval.xml"),
            "--report",
            str(work / "oval.html"),
            str(feed),
        ],
        env,
    )
    proc = run(
        [
            "oscap",
            "xccdf",
            "eval",
            "--profile",
            PROFILE,
            "--results",
            str(work / "xccdf.xml"),
            "--report",
            str(work / "xccdf.html"),
            str(ds),
        ],
        env,
    )
    if proc.returncode not in {0, 2}:
        raise RuntimeError(f"oscap xccdf eval failed: {proc.stderr.decode(errors='replace')}")
    out["oscap"] = time.monotonic() - start
    start = time.monotonic()
    parse_oval_results(work / "oval.xml")
    parse_xccdf_results(work / "xccdf.xml")
    out["parse"] = time.monotonic() - start
    out["total"] = sum(out.values())
    return out


def scanner(
    scan_bin: Path,
    image: str,
    host: str,
    base: Path,
    feed: Path,
    ds: Path,
    pw: pwd.struct_passwd,
) -> dict[str, float]:
    for name in ("work", "out", "home"):
        (base / name).mkdir()
        os.chown(base / name, pw.pw_uid, pw.pw_gid)
    cmd = [
        "setpriv",
        f"--reuid={pw.pw_uid}",
        f"--regid={pw.pw_gid}",
        "--clear-groups",
        str(scan_bin),
        image,
        "--insecure-registry",
        host,
        "--feed-file",
        str(feed),
        "--compliance",
        "--datastream-file",
        str(ds),
        "--output-dir",
        str(base / "out"),
        "--work-dir",
        str(base / "work"),
        "--log-level",
        "WARNING",
    ]
    env = {"PATH": os.environ["PATH"], "HOME": str(base / "home")}
    start = time.monotonic()
    proc = run(cmd, env, base / "home")
    wall = time.monotonic() - start
    doc = json.loads((base / "out" / "result.json").read_text(encoding="utf-8"))
    if doc["outcome"] != "Completed":
        raise RuntimeError(f"scan failed ({proc.returncode}): {doc['error']}")
    timings = {k: float(v) for k, v in doc["timings"].items()}
    timings["total"] = wall
    return timings


def in_pod(cluster: DevCluster, rounds: int, feed: Path) -> list[dict[str, float]]:
    """Per-phase times of ``rounds`` scans run by scanner Jobs of the installed operator."""
    registry = cluster.registry
    if registry is None:
        raise SystemExit("a real-node cluster has a registry; this one has none")
    release = install_scapguard(cluster, replicas="1", maxConcurrentScans="1")
    release.allow_user_namespace_scanners()
    ns = "bench"
    image = FixtureImages(registry.host, cluster.workdir / "images").debian12_minbase()
    kubectl = cluster.kubectl
    kubectl("create", "namespace", ns)
    kubectl("-n", ns, "create", "configmap", "feed", f"--from-file=feed.xml={feed}")
    for i in range(rounds):
        policy = {
            "apiVersion": "scapguard.io/v1alpha1",
            "kind": "ScanPolicy",
            "metadata": {"name": f"round-{i}", "namespace": ns},
            "spec": {
                "tags": ["*"],
                "vulnerabilities": {"enabled": True,
                                    "feed": {"configMapRef": {"name": "feed", "key": "feed.xml"}}},
                "compliance": {"enabled": True, "profile": PROFILE},
                "action": "Report",
                "scanner": {"insecureRegistries": [registry.cluster_host]},
            },
        }  # fmt: skip
        kubectl("apply", "-f", "-", input_text=json.dumps(policy))
    api = kube_client.ApiClient(cluster.admin_configuration())
    tag_image(api, ns, "base", "bookworm", f"{registry.cluster_host}/{image.repository}",
              image.digest)  # fmt: skip
    api.close()

    def scans() -> list[dict[str, Any]]:
        out = kubectl("-n", ns, "get", "imagescans", "-o", "json")
        items: list[dict[str, Any]] = json.loads(out.stdout)["items"] if out.stdout else []
        return items

    def done() -> bool:
        got = scans()
        return len(got) == rounds and all(
            (s.get("status") or {}).get("state") == "Completed" for s in got
        )

    wait_for(f"{rounds} scans Completed", done, 600 * rounds, 2.0)
    timings = []
    for scan in scans():
        name = scan["metadata"]["name"]
        cm = json.loads(kubectl("-n", ns, "get", "configmap", result_config_map_name(str(name)),
                                "-o", "json").stdout)  # fmt: skip
        doc = json.loads(gzip.decompress(base64.b64decode(cm["binaryData"][RESULT_KEY])))
        if doc["outcome"] != "Completed":
            raise RuntimeError(f"scan {name} failed: {doc['error']}")
        phases = {k: float(v) for k, v in doc["timings"].items()}
        phases["total"] = sum(phases.values())
        phases["idMapping:" + str(doc["scanner"]["idMapping"])] = 0.0
        phases["oscap " + str(doc["scanner"]["oscapVersion"])] = 0.0
        timings.append(phases)
    return timings


def main() -> None:
    pod = "--in-pod" in sys.argv[1:]
    args = [a for a in sys.argv[1:] if a != "--in-pod"]
    rounds = int(args[0]) if args else 3
    if os.geteuid() != 0:
        sys.stderr.write("run as root (creates the scanning user, unpacks by hand as root)\n")
        raise SystemExit(2)
    pw = ensure_user()
    scan_bin = ensure_scanner_venv() / "scapguard-scan"
    top = Path(tempfile.mkdtemp(prefix="scapguard-bench-scan-", dir="/var/tmp"))
    top.chmod(0o755)
    try:
        with Registry(top / "registry") as registry:
            images = FixtureImages(registry.host, top / "images")
            image = images.debian12_minbase().by_digest
            ds = top / "ssg-debian12-ds.xml"
            shutil.copyfile(ssg_debian_content() / "ssg-debian12-ds.xml", ds)
            ds.chmod(0o644)
            probe = top / "probe"
            probe.mkdir()
            by_hand(image, probe, _empty_feed(top), ds)  # warm caches; also the rootfs
            feed = top / "feed.xml"
            definitions = synthetic_feed(probe / "bundle" / "rootfs", feed)
            scans: list[dict[str, float]] = []
            hands: list[dict[str, float]] = []
            if pod:
                with running_cluster(top / "cluster", real_node=True) as cluster:
                    scans = in_pod(cluster, rounds, feed)
                for i in range(rounds):
                    hand = top / f"hand-{i}"
                    hand.mkdir()
                    hands.append(by_hand(image, hand, feed, ds))
                    shutil.rmtree(hand)
                rounds = 0  # measured above
            for i in range(rounds):
                base = top / f"scan-{i}"
                base.mkdir()
                base.chmod(0o755)
                scans.append(scanner(scan_bin, image, registry.host, base, feed, ds, pw))
                hand = top / f"hand-{i}"
                hand.mkdir()
                hands.append(by_hand(image, hand, feed, ds))
                shutil.rmtree(hand)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    report(len(scans), definitions, scans, hands)
    if pod:
        sys.stdout.write(
            "scanner in its pod: "
            + ", ".join(sorted({k for x in scans for k in x if " " in k or ":" in k}))
            + f"; by hand: {run(['oscap', '--version']).stdout.decode().splitlines()[0]}\n"
        )


def _empty_feed(top: Path) -> Path:
    feed = top / "empty.xml"
    ns = "http://oval.mitre.org/XMLSchema/oval-definitions-5"
    feed.write_text(
        f'<?xml version="1.0"?><oval_definitions xmlns="{ns}" '
        'xmlns:oval="http://oval.mitre.org/XMLSchema/oval-common-5"><generator>'
        "<oval:schema_version>5.11.2</oval:schema_version><oval:timestamp>"
        "2024-01-01T00:00:00</oval:timestamp></generator></oval_definitions>",
        encoding="utf-8",
    )
    feed.chmod(0o644)
    return feed


def report(
    rounds: int, definitions: int, scans: list[dict[str, float]], hands: list[dict[str, float]]
) -> None:
    out = sys.stdout
    out.write(
        f"debian12 minbase, {definitions} OVAL definitions + SSG standard, "
        f"{rounds} rounds, medians in seconds\n"
    )
    out.write(f"{'phase':<8} {'scanner':>8} {'by hand':>8} {'ratio':>6}\n")
    for phase in (*PHASES, "total"):
        s = statistics.median(x.get(phase, 0.0) for x in scans)
        h = statistics.median(x.get(phase, 0.0) for x in hands)
        ratio = f"{s / h:6.2f}" if h > 0 else "   n/a"
        out.write(f"{phase:<8} {s:8.2f} {h:8.2f} {ratio}\n")


if __name__ == "__main__":
    main()
