"""Running ``oscap`` on an unpacked tree (``OSCAP_PROBE_ROOT``), with OpenSCAP 1.3.7's traps.

* dpkginfo (1.3.x) goes through libapt. libapt reads the *host's* apt configuration first (a
  Docker-style ``docker-clean`` sets ``Dir::Cache::pkgcache ""``, which under ``RootDir`` makes
  the cache rename fail), and needs the image's ``/usr/share/dpkg/cputable``. When it cannot
  initialise, oscap reports every package absent, exits 0 and prints one stderr line,
  ``dpkginfo_init has failed``. So: oscap always runs with an isolated ``APT_CONFIG`` (no host
  config parts, no image sources or lists, the image's architecture set explicitly, so libapt
  never runs a ``dpkg`` binary), that stderr line is an error (``ProbeFailed``), and a canary
  evaluation must find at least one installed package before any feed result is believed.
* Debian's rpm looks for its database under ``~/.rpmdb`` (its default ``%_dbpath`` is a
  ``%(bash -c ...)`` macro): ``OSCAP_PROBE_RPMDB_PATH`` names the image's database directory,
  ``HOME`` is an empty scratch directory with an ``.rpmmacros`` setting ``%_dbpath`` for the
  probes that read the macros themselves. That file is always written (a Debian image gets a
  path that does not exist), so the host's shell macro is never expanded, and the path must be
  a plain one (:data:`PLAIN_PATH`, ``%`` doubled besides): rpm runs ``%(...)`` as a command.
* probes that chroot() abort oscap (exit 134, SIGABRT) when they lack CAP_SYS_CHROOT: reported
  as ``ProbeFailed`` with the hint to use the user-namespace mode, where chroot() works.
* exit codes: ``oval eval`` 0 = evaluated; ``xccdf eval`` 0 = all passed, 2 = some rule failed;
  anything else is an error (``OscapFailed``). For the feed's evaluation, oscap refusing the
  content (``Invalid OVAL Definition``), an assertion failure or "No OVAL family" before an
  abort (broken excerpts: references to missing or mis-namespaced tests and objects), or any
  other crash by signal is ``ContentInvalid`` naming the feed: the canary has already shown
  that the probes work on this image.
* dpkginfo (1.3.7) collects nothing for a ``pattern match`` name; rpminfo does. The rpm canary
  therefore also lists every installed package (the pre-filter's input, one probe run).

oscap never runs as root: the caller's :class:`~scapguard.scanner.sandbox.Sandbox` wraps it (in
userns mode it is uid 0 of the scanning user's own namespace, which is that user outside).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from lxml import etree

from scapguard.results.model import ErrorReason
from scapguard.results.oval import parse_oval_results
from scapguard.results.xmlsafe import XMLContentError, parse_file
from scapguard.scanner.errors import ScanFailure, run, stderr_tail
from scapguard.scanner.osdetect import DetectedOS
from scapguard.scanner.sandbox import Sandbox

log = logging.getLogger(__name__)

DPKGINFO_FAILED: Final = "dpkginfo_init has failed"
_ABORT_CODES: Final = frozenset({134, -6})
_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: OCI architecture -> Debian architecture (for libapt's APT::Architecture).
DEBIAN_ARCH: Final = {
    "amd64": "amd64",
    "arm64": "arm64",
    "arm": "armhf",
    "386": "i386",
    "ppc64le": "ppc64el",
    "s390x": "s390x",
    "riscv64": "riscv64",
}
_MISSING: Final = "/nonexistent-scapguard"
#: What a path written into rpm macros may look like.
PLAIN_PATH: Final = re.compile(r"^/[A-Za-z0-9._/-]+$")
_CANARY_OBJECT: Final = {"debian": "dpkginfo", "rhel": "rpminfo", "fedora": "rpminfo"}
#: At least one of these is installed on every supported image (the probes take exact names).
CANARY_PACKAGES: Final = {
    "debian": ("base-files", "dpkg", "libc6"),
    "rhel": ("rpm", "glibc", "filesystem", "setup", "basesystem"),
    "fedora": ("rpm", "glibc", "filesystem", "setup", "basesystem"),
}


#: oscap's words for content it cannot use (validation, or an assertion on a broken excerpt).
CONTENT_ERRORS: Final = ("Invalid OVAL Definition", "Assertion", "No OVAL family")
_INVENTORY_FAMILIES: Final = frozenset({"rhel", "fedora"})


@dataclass(frozen=True)
class OscapRun:
    returncode: int
    stderr: str


@dataclass(frozen=True)
class Canary:
    items: int  # package items the probe collected (> 0)
    #: every installed package name, where the probe can list them (rpm); None for dpkg
    packages: frozenset[str] | None


def version() -> str:
    proc = run(["oscap", "--version"], timeout=60, reason=ErrorReason.OSCAP_FAILED)
    first = proc.stdout.decode(errors="replace").splitlines()[:1]
    match = re.search(r"([0-9]+\.[0-9]+\.[0-9]+)", first[0] if first else "")
    if match is None:
        raise ScanFailure(ErrorReason.OSCAP_FAILED, f"cannot read oscap's version from {first}")
    return match.group(1)


def debian_arch(arch: str) -> str:
    """The Debian name of an OCI architecture; UnsupportedOS for one dpkg does not know."""
    found = DEBIAN_ARCH.get(arch)
    if found is None:
        raise ScanFailure(ErrorReason.UNSUPPORTED_OS, f"image architecture {arch!r} unsupported")
    return found


def write_apt_config(workdir: Path, arch: str) -> Path:
    """An apt configuration that ignores the host's and the image's apt settings."""
    apt_arch = debian_arch(arch)
    parts = workdir / "apt.conf.d"
    parts.mkdir(parents=True, exist_ok=True)
    conf = workdir / "apt.conf"
    # Values under Dir:: are taken relative to RootDir (the image) once dpkginfo sets it.
    conf.write_text(
        "\n".join(
            [
                f'Dir::Etc::main "{workdir / "none.conf"}";',
                f'Dir::Etc::parts "{parts}";',
                f'Dir::Etc::preferences "{_MISSING}/preferences";',
                f'Dir::Etc::preferencesparts "{_MISSING}/preferences.d";',
                f'Dir::Etc::sourcelist "{_MISSING}/sources.list";',
                f'Dir::Etc::sourceparts "{_MISSING}/sources.list.d";',
                f'Dir::State::lists "{_MISSING}/lists";',
                f'APT::Architecture "{apt_arch}";',
                f'APT::Architectures {{ "{apt_arch}"; }};',
                "",
            ]
        ),
        encoding="utf-8",
    )
    return conf


def environment(rootfs: Path, workdir: Path, os_: DetectedOS, arch: str) -> dict[str, str]:
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": _PATH,
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "TMPDIR": str(workdir),
        "OSCAP_PROBE_ROOT": str(rootfs),
        "OSCAP_PROBE_OS_NAME": os_.info.pretty_name,
        "OSCAP_PROBE_OS_VERSION": os_.info.version_id,
        "OSCAP_PROBE_ARCHITECTURE": arch,
        "OSCAP_PROBE_PRIMARY_HOST_NAME": "scapguard-scan",
        "APT_CONFIG": str(write_apt_config(workdir, arch)),
    }
    if os_.rpmdb_path is not None:
        env["OSCAP_PROBE_RPMDB_PATH"] = _plain_path(os_.rpmdb_path)
    (home / ".rpmmacros").write_text(rpm_macros(os_.rpmdb_path), encoding="utf-8")
    return env


def manifest_root(env: dict[str, str], directory: Path) -> dict[str, str]:
    """``env`` for an OCI-flavoured feed (:mod:`scapguard.scanner.ocifeed`): the probe root is
    ``directory`` (holding only the scanner's ``manifest``) *with* a trailing slash, the one
    form under which oscap 1.3.7 resolves the feed's path ``.`` to the root; the image tree is
    not read. A probe root rather than none keeps oscap from describing the scanner's own
    host (name, addresses) in the results' system_info."""
    out = {k: v for k, v in env.items() if k != "OSCAP_PROBE_RPMDB_PATH"}
    out["OSCAP_PROBE_ROOT"] = os.fspath(directory).rstrip("/") + "/"
    return out


def _plain_path(path: str) -> str:
    if not PLAIN_PATH.fullmatch(path):
        raise ScanFailure(
            ErrorReason.HOSTILE_IMAGE,
            f"rpm database path {path!r} is not a plain path ({PLAIN_PATH.pattern})",
        )
    return path


def rpm_macros(rpmdb_path: str | None) -> str:
    """The scratch ``.rpmmacros``: ``%_dbpath`` the image's database, or nothing that exists."""
    path = _plain_path(rpmdb_path or f"{_MISSING}/rpm")
    return f"%_dbpath {path.replace('%', '%%')}\n"


def _check_stderr(stderr: str, what: str) -> None:
    if DPKGINFO_FAILED in stderr:
        raise ScanFailure(
            ErrorReason.PROBE_FAILED,
            f"{what}: the dpkginfo probe could not read the image's package database "
            f"({DPKGINFO_FAILED}; e.g. /usr/share/dpkg/cputable missing in the image)",
        )


def _judge(
    proc_rc: int, stderr: str, what: str, ok: frozenset[int], content: str | None = None
) -> None:
    """Raise for a failed run. ``content`` names the feed when a failure can be the feed's."""
    _check_stderr(stderr, what)
    if content is not None and proc_rc not in ok:
        crashed = proc_rc < 0 or proc_rc > 128
        said = next((words for words in CONTENT_ERRORS if words in stderr), None)
        if said is not None or (crashed and proc_rc not in _ABORT_CODES):
            why = f"oscap reported {said!r}" if said else f"oscap crashed (exit {proc_rc})"
            raise ScanFailure(
                ErrorReason.CONTENT_INVALID,
                f"{what}: {why} on the content {content}: a broken or truncated feed? "
                f"{stderr[-500:]}",
            )
    if proc_rc in _ABORT_CODES:
        raise ScanFailure(
            ErrorReason.PROBE_FAILED,
            f"{what}: oscap aborted (exit {proc_rc}): a probe that needs chroot() ran without "
            f"CAP_SYS_CHROOT; use --id-mapping=userns. {stderr[-500:]}",
        )
    if proc_rc not in ok:
        raise ScanFailure(ErrorReason.OSCAP_FAILED, f"{what}: oscap exited {proc_rc}: {stderr}")


def canary_definitions(family: str, dest: Path) -> Path:
    """OVAL that is true when the package probe finds at least one installed package, and for
    rpm families also lists every installed package (an inventory definition)."""
    probe = _CANARY_OBJECT[family]
    inventory = {"inv_def": "", "inv_test": "", "inv_object": ""}
    if family in _INVENTORY_FAMILIES:
        inventory = {
            "inv_def": _CANARY_INVENTORY_DEFINITION,
            "inv_test": _CANARY_INVENTORY_TEST.format(probe=probe),
            "inv_object": _CANARY_INVENTORY_OBJECT.format(probe=probe),
        }
    values = "".join(f"<value>{name}</value>" for name in CANARY_PACKAGES[family])
    dest.write_text(
        _CANARY_OVAL.format(ns=_LINUX_NS, probe=probe, values=values, **inventory),
        encoding="utf-8",
    )
    return dest


# The canary's OVAL (str.format): ``{probe}`` is dpkginfo or rpminfo, ``{values}`` the package
# names, ``{inv_*}`` the inventory parts below or nothing.
_LINUX_NS: Final = "http://oval.mitre.org/XMLSchema/oval-definitions-5#linux"
_CANARY_OVAL: Final = """<?xml version="1.0" encoding="UTF-8"?>
<oval_definitions xmlns="http://oval.mitre.org/XMLSchema/oval-definitions-5"
    xmlns:oval="http://oval.mitre.org/XMLSchema/oval-common-5" xmlns:l="{ns}">
  <generator><oval:product_name>scapguard canary</oval:product_name>
    <oval:schema_version>5.11.2</oval:schema_version>
    <oval:timestamp>2024-01-01T00:00:00</oval:timestamp></generator>
  <definitions>
    <definition id="oval:io.scapguard.canary:def:1" version="1" class="inventory">
      <metadata><title>the package database is readable</title>
        <description>at least one installed package</description></metadata>
      <criteria><criterion test_ref="oval:io.scapguard.canary:tst:1"/></criteria>
    </definition>{inv_def}
  </definitions>
  <tests>
    <l:{probe}_test id="oval:io.scapguard.canary:tst:1" version="1" check="all"
        check_existence="at_least_one_exists" comment="any package">
      <l:object object_ref="oval:io.scapguard.canary:obj:1"/>
    </l:{probe}_test>{inv_test}
  </tests>
  <objects>
    <l:{probe}_object id="oval:io.scapguard.canary:obj:1" version="1">
      <l:name var_ref="oval:io.scapguard.canary:var:1" var_check="at least one"/>
    </l:{probe}_object>{inv_object}
  </objects>
  <variables>
    <constant_variable id="oval:io.scapguard.canary:var:1" version="1" datatype="string"
        comment="packages every supported distribution installs">{values}</constant_variable>
  </variables>
</oval_definitions>
"""
_CANARY_INVENTORY_DEFINITION: Final = """
    <definition id="oval:io.scapguard.canary:def:2" version="1" class="inventory">
      <metadata><title>installed packages</title><description>every package</description>
      </metadata>
      <criteria><criterion test_ref="oval:io.scapguard.canary:tst:2"/></criteria>
    </definition>"""
_CANARY_INVENTORY_TEST: Final = """
    <l:{probe}_test id="oval:io.scapguard.canary:tst:2" version="1" check="all"
        check_existence="any_exist" comment="every package">
      <l:object object_ref="oval:io.scapguard.canary:obj:2"/>
    </l:{probe}_test>"""
_CANARY_INVENTORY_OBJECT: Final = """
    <l:{probe}_object id="oval:io.scapguard.canary:obj:2" version="1">
      <l:name operation="pattern match">.*</l:name>
    </l:{probe}_object>"""


def run_canary(
    sandbox: Sandbox, env: dict[str, str], workdir: Path, family: str, *, timeout: float
) -> Canary:
    """Evaluate the canary; ScanFailure(ProbeFailed) unless packages were found."""
    defs = canary_definitions(family, workdir / "canary-oval.xml")
    results = workdir / "canary-results.xml"
    proc = run(
        sandbox.wrap(["oscap", "oval", "eval", "--results", str(results), str(defs)]),
        timeout=timeout,
        reason=ErrorReason.OSCAP_FAILED,
        env=env,
        check=False,
    )
    stderr = stderr_tail(proc.stderr)
    _judge(proc.returncode, stderr, "package database check", frozenset({0}))
    try:
        parsed = parse_oval_results(results)
    except XMLContentError as exc:
        raise ScanFailure(ErrorReason.RESULTS_INVALID, str(exc)) from exc
    if parsed.errors:
        raise ScanFailure(
            ErrorReason.PROBE_FAILED, f"package database check: {parsed.errors[0].message}"
        )
    items = _existing_items(results)
    if not items:
        raise ScanFailure(
            ErrorReason.PROBE_FAILED,
            f"the {_CANARY_OBJECT[family]} probe found no installed package in the image: "
            "its package database could not be read",
        )
    packages = None
    if family in _INVENTORY_FAMILIES:
        names = (el.findtext("{*}name") for el in items)
        packages = frozenset(n for n in names if n)
    return Canary(len(items), packages)


def _existing_items(results: Path) -> list[etree._Element]:
    root = parse_file(results)
    return [
        el
        for el in root.iter()
        if isinstance(el.tag, str)
        and el.tag.endswith("_item")
        and el.get("status", "exists") == "exists"
    ]


def oval_eval(
    sandbox: Sandbox,
    env: dict[str, str],
    definitions: Path,
    results: Path,
    report: Path,
    *,
    timeout: float,
    content: str | None = None,
) -> OscapRun:
    """Evaluate ``definitions``; ``content`` names the feed in ContentInvalid messages."""
    cmd = [
        "oscap",
        "oval",
        "eval",
        "--results",
        str(results),
        "--report",
        str(report),
        str(definitions),
    ]
    proc = run(
        sandbox.wrap(cmd),
        timeout=timeout,
        reason=ErrorReason.OSCAP_FAILED,
        env=env,
        check=False,
    )
    stderr = stderr_tail(proc.stderr)
    _judge(proc.returncode, stderr, "oscap oval eval", frozenset({0}), content or str(definitions))
    return OscapRun(proc.returncode, stderr)


def xccdf_eval(
    sandbox: Sandbox,
    env: dict[str, str],
    datastream: Path,
    profile: str,
    results: Path,
    report: Path,
    *,
    tailoring: Path | None,
    timeout: float,
) -> OscapRun:
    cmd = ["oscap", "xccdf", "eval", "--profile", profile]
    if tailoring is not None:
        cmd += ["--tailoring-file", str(tailoring)]
    cmd += ["--results", str(results), "--report", str(report), str(datastream)]
    proc = run(
        sandbox.wrap(cmd), timeout=timeout, reason=ErrorReason.OSCAP_FAILED, env=env, check=False
    )
    stderr = stderr_tail(proc.stderr)
    _judge(proc.returncode, stderr, "oscap xccdf eval", frozenset({0, 2}))
    return OscapRun(proc.returncode, stderr)


def ensure_writable_by_sandbox(path: Path) -> None:
    """Results directories are created by the scanning user, which is uid 0 in the namespace."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
