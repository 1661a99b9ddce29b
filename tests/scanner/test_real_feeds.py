"""Real vendor OVAL feeds: scapguard's findings equal plain ``oscap oval eval``, definition for
definition, on fixture trees the feeds themselves describe.

The feeds live outside the repository (``<repo>/../shared/feeds``, see its PROVENANCE.md) and
are never copied into it; each test skips, naming the file, when its feed is absent. For each
feed, packages and fixed versions come from the feed's own ``less than`` states: some packages
are installed one step below the fixed version (those definitions become true), some at the
fixed version (they stay false). The tree is evaluated twice: by scapguard's own path
(content resolution, canary, pre-filter, ``oscap oval eval`` in the scanner's sandbox as the
non-root scanning user, results parsing) and by plain ``oscap oval eval`` of the untouched feed
as root, with only the environment oscap needs to read the tree. The sets of true definition
ids must be equal, and non-trivial. Canonical's OCI-flavoured feeds are evaluated as Canonical
says: plain oscap runs, without a probe root, next to a ``manifest`` made by the real
``dpkg-query -W`` from the tree's dpkg database; scapguard must write the same manifest itself.
"""

from __future__ import annotations

import bz2
import gzip
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from lxml import etree

from scapguard.results.model import ErrorReason, OSInfo
from scapguard.results.oval import parse_oval_results
from scapguard.scanner import content, ocifeed, oscap, osdetect, pipeline
from scapguard.scanner.errors import ScanFailure
from scapguard.scanner.sandbox import MAPPED_IDS, Sandbox
from scapguard_dev.fixtureimages import dpkg_query_manifest, write_dpkg_tree, write_rpm_tree
from scapguard_dev.scanuser import SUBORDINATE_START, ScanUser

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FEEDS = REPO.parent / "shared" / "feeds"
NS_RES = "{http://oval.mitre.org/XMLSchema/oval-results-5}"
ARCH = "amd64"
#: the OCI feeds' manifest pattern: ^NAME(?::\w+|)\s+(.*)$
_OCI_PATTERN = re.compile(r"^\^([A-Za-z0-9.+-]+)\(")


def feed_file(relative: str) -> Path:
    path = FEEDS / relative
    if not path.is_file():
        pytest.skip(f"real vendor feed {path} not present (see {FEEDS}/PROVENANCE.md)")
    return path


def feed_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:3] == b"BZh":
        return bz2.decompress(data)
    return data


@dataclass(frozen=True)
class Candidate:
    definition: str
    package: str
    fixed: str  # as in the feed's state, epoch included


def entity_value(entity: etree._Element | None, by_id: dict[str | None, etree._Element]) -> str:
    """An object entity's literal value, or the first value of its constant_variable."""
    if entity is None:
        return ""
    variable = by_id.get(entity.get("var_ref"))
    if variable is not None:
        return (variable.findtext("{*}value") or "").strip()
    return (entity.text or "").strip()


def candidates(doc: bytes) -> list[Candidate]:
    """(definition, package, fixed version) from every ``less than`` package state."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)
    root = etree.fromstring(doc, parser)
    by_id = {el.get("id"): el for el in root.iter() if isinstance(el.tag, str) and el.get("id")}
    found: list[Candidate] = []
    for definition in root.iter("{*}definition"):
        for criterion in definition.iter("{*}criterion"):
            test = by_id.get(criterion.get("test_ref"))
            if test is None or criterion.get("negate") == "true":
                continue
            kind = etree.QName(test).localname
            obj = state = None
            for ref in test:
                obj = by_id.get(ref.get("object_ref"), obj)
                state = by_id.get(ref.get("state_ref"), state)
            if obj is None or state is None:
                continue
            fixed = next(
                (
                    (e.text or "").strip()
                    for e in state
                    if etree.QName(e).localname in {"evr", "subexpression"}
                    and e.get("operation") == "less than"
                ),
                "",
            )
            name = ""
            if kind in {"rpminfo_test", "dpkginfo_test"}:
                name = entity_value(obj.find("{*}name"), by_id)
            elif kind == "textfilecontent54_test":
                match = _OCI_PATTERN.match(entity_value(obj.find("{*}pattern"), by_id))
                name = match.group(1) if match else ""
            if fixed and name:
                found.append(Candidate(definition.get("id", ""), name, fixed))
    return found


def one_below(version: str) -> str:
    """A version just below ``version`` for rpm and dpkg alike: the last non-zero number
    after the epoch decremented (``0:60.6.1-1.el8`` -> ``0:60.6.1-1.el7``)."""
    epoch, sep, rest = version.rpartition(":") if ":" in version else ("", "", version)
    runs = [m for m in re.finditer(r"\d+", rest) if int(m.group()) > 0]
    if not runs:
        raise ValueError(f"no number to decrement in {version!r}")
    m = runs[-1]
    lower = str(int(m.group()) - 1).zfill(len(m.group()))
    return f"{epoch}{sep}{rest[: m.start()]}{lower}{rest[m.end() :]}"


def choose(found: list[Candidate], count: int, reserved: set[str]) -> dict[str, str]:
    """``count`` packages, of distinct definitions where the feed has enough: the first half
    one below their fixed version (vulnerable), the rest at it (fixed)."""
    chosen: dict[str, str] = {}
    # distinct definitions first; an excerpt with few definitions then gives more packages
    firsts: dict[str, Candidate] = {}
    for cand in found:
        firsts.setdefault(cand.definition, cand)
    ordered = list(firsts.values())
    for cand in ordered + [c for c in found if firsts[c.definition] is not c]:
        if cand.package in chosen or cand.package in reserved:
            continue
        if not re.fullmatch(r"(\d+:)?[^:-]+-[^:-]+", cand.fixed):
            continue  # the fixture builders take [epoch:]version-revision
        below = len(chosen) < (count + 1) // 2
        chosen[cand.package] = one_below(cand.fixed) if below else cand.fixed
        if len(chosen) == count:
            break
    return chosen


@dataclass(frozen=True)
class Case:
    feed: str
    format: str  # "rpm", "dpkg" or "oci"
    os_release: Mapping[str, str]
    os_info: OSInfo | None = None  # None: detected by the scanner's osdetect
    base: Mapping[str, str] = field(default_factory=dict)  # release package, canary package
    files: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    keyid: str | None = None
    debian_version: str = ""
    lsb_release: str | None = None
    count: int = 8
    #: most definitions are package-gated only, so most must be filtered out (RHSA and Photon
    #: definitions also hang on an rpmverifyfile/"OS installed" test the filter keeps unknown)
    mostly_filtered: bool = False
    min_true: int = 2  # an excerpt of one or two definitions can make fewer true


def _os(id_: str, version: str, pretty: str) -> dict[str, str]:
    return {"ID": id_, "VERSION_ID": version, "PRETTY_NAME": pretty, "NAME": pretty}


JAMMY_LSB = (
    "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=22.04\nDISTRIB_CODENAME=jammy\n"
    'DISTRIB_DESCRIPTION="Ubuntu 22.04.4 LTS"\n'
)

CASES: dict[str, Case] = {
    "rhel8-rhsa": Case(
        "redhat/claircore__com.redhat.rhsa-RHEL8.xml",
        "rpm",
        {
            **_os("rhel", "8.1", "Red Hat Enterprise Linux 8.1 (Ootpa)"),
            "PLATFORM_ID": "platform:el8",
        },
        base={"redhat-release": "8.1-3.3.el8", "filesystem": "3.8-2.el8"},
        files={
            "redhat-release": {
                "/etc/redhat-release": "Red Hat Enterprise Linux release 8.1 (Ootpa)\n"
            }
        },
        keyid="199e2f91fd431d51",
    ),
    "opensuse-leap-15.3": Case(
        "other/vulnerablecode__opensuse.leap.15.3.xml.gz",
        "rpm",
        _os("opensuse-leap", "15.3", "openSUSE Leap 15.3"),
        os_info=OSInfo("opensuse-leap", "15.3", "openSUSE Leap 15.3", "rhel"),
        base={"openSUSE-release": "15.3-lp153.1.1", "filesystem": "15.0-11.3.2"},
        keyid="b88b2fd43dbdc284",
        mostly_filtered=True,
    ),
    "photon3": Case(
        "other/claircore__com.vmware.phsa-photon3.xml",
        "rpm",
        _os("photon", "3.0", "VMware Photon OS/Linux"),
        os_info=OSInfo("photon", "3.0", "VMware Photon OS/Linux", "rhel"),
        base={"photon-release": "3.0-1.ph3", "filesystem": "1.1-4.ph3"},
        keyid="c0b5e0ab66fd4949",
    ),
    "debian-bullseye": Case(
        "debian/vuls-data-update__oval-definitions-bullseye.xml",
        "dpkg",
        {**_os("debian", "11", "Debian GNU/Linux 11 (bullseye)"), "VERSION_CODENAME": "bullseye"},
        base={"base-files": "11.1+deb11u9"},
        debian_version="11.9\n",
    ),
    "ubuntu-jammy-usn-dpkginfo": Case(
        # the USN excerpt with its one missing closing tag restored (PROVENANCE.md); the
        # bionic excerpt extends a definition it does not contain, which oscap refuses
        "ubuntu/vuls-data-update__com.ubuntu.jammy.usn.oval.REPAIRED.xml",
        "dpkg",
        {**_os("ubuntu", "22.04", "Ubuntu 22.04.4 LTS"), "VERSION_CODENAME": "jammy"},
        base={"base-files": "12ubuntu4.6"},
        debian_version="bookworm/sid\n",
        lsb_release=JAMMY_LSB,
        min_true=1,
    ),
    "ubuntu-jammy-oci-manifest": Case(
        "ubuntu/vuls-data-update__oci.com.ubuntu.jammy.cve.oval.xml",
        "oci",
        {**_os("ubuntu", "22.04", "Ubuntu 22.04.4 LTS"), "VERSION_CODENAME": "jammy"},
        # libc6 and libssh-4 are Multi-Arch: same: their manifest lines read NAME:amd64
        base={"base-files": "12ubuntu4.6", "libc6": "2.35-0ubuntu3.8"},
        debian_version="bookworm/sid\n",
        min_true=1,
    ),
    "ubuntu-jammy-oci-pkg": Case(
        "ubuntu/vuls-data-update__oci.com.ubuntu.jammy.pkg.oval.xml.bz2",
        "oci",
        {**_os("ubuntu", "22.04", "Ubuntu 22.04.4 LTS"), "VERSION_CODENAME": "jammy"},
        base={"base-files": "12ubuntu4.6"},
        debian_version="bookworm/sid\n",
        count=2,  # one package per definition: one true, one false
        min_true=1,
    ),
}


@dataclass(frozen=True)
class Tree:
    root: Path
    packages: dict[str, str]
    found: osdetect.DetectedOS


def build_tree(case: Case, doc: bytes, where: Path) -> Tree:
    packages = choose(candidates(doc), case.count, set(case.base))
    assert packages, f"{case.feed}: no package state to build a tree from"
    installed = {**packages, **case.base}
    root = where / "rootfs"
    root.mkdir(parents=True)
    root.chmod(0o755)
    if case.format == "rpm":
        write_rpm_tree(root, installed, workdir=where / "build", os_release=case.os_release,
                       files=case.files, signing_keyid=case.keyid)  # fmt: skip
    else:
        write_dpkg_tree(root, installed, os_release=case.os_release,
                        debian_version=case.debian_version,
                        lsb_release=case.lsb_release)  # fmt: skip
    if case.os_info is None:
        found = osdetect.detect(root)
    else:
        rpmdb = "/var/lib/rpm" if case.format == "rpm" else None
        found = osdetect.DetectedOS(case.os_info, None, case.os_info.version_id.split(".")[0],
                                    rpmdb)  # fmt: skip
    return Tree(root, packages, found)


def true_definitions(results: Path) -> set[str]:
    root = etree.parse(str(results)).getroot()
    defs = root.iterfind(f"{NS_RES}results/{NS_RES}system/{NS_RES}definitions/{NS_RES}definition")
    return {d.get("definition_id", "") for d in defs if d.get("result") == "true"}


def plain_oscap(tree: Tree, feed_xml: Path, work: Path, *, oci: bool = False) -> set[str]:
    """``oscap oval eval`` as root, the whole feed, only the environment oscap needs.

    ``oci``: Canonical's way, ``dpkg-query -W > manifest`` and oscap run in that directory
    (no probe root: the feed reads nothing but ./manifest)."""
    home = work / "plain-home"
    (home / "apt.conf.d").mkdir(parents=True)
    (home / "apt.conf").write_text(
        f'Dir::Etc::parts "{home / "apt.conf.d"}";\nAPT::Architecture "{ARCH}";\n',
        encoding="utf-8",
    )
    (home / ".rpmmacros").write_text("%_dbpath /var/lib/rpm\n", encoding="utf-8")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "OSCAP_PROBE_ROOT": str(tree.root), "APT_CONFIG": str(home / "apt.conf"),
           "OSCAP_PROBE_RPMDB_PATH": "/var/lib/rpm"}  # fmt: skip
    cwd = work
    if oci:
        cwd = work / "plain-oci"
        cwd.mkdir()
        (cwd / "manifest").write_text(dpkg_query_manifest(tree.root), encoding="utf-8")
        env = {k: v for k, v in env.items() if not k.startswith("OSCAP_PROBE_")}
    results = work / "plain-results.xml"
    proc = subprocess.run(["oscap", "oval", "eval", "--results", str(results), str(feed_xml)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=900,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return true_definitions(results)


def scan_sandbox(user: ScanUser) -> Sandbox:
    """The scanner's userns mode, entered from root by becoming the scanning user first."""
    return Sandbox("userns", (
        "setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups",
        "unshare", "--map-root-user", f"--map-users={SUBORDINATE_START},1,{MAPPED_IDS}",
        f"--map-groups={SUBORDINATE_START},1,{MAPPED_IDS}", "--",
    ))  # fmt: skip


@dataclass(frozen=True)
class ScapguardRun:
    true: set[str]
    findings: set[str]  # definition ids behind the findings
    packages: set[str]  # affected packages named by the findings
    definitions: int
    kept: int


def scapguard(tree: Tree, feed: Path, work: Path, user: ScanUser) -> ScapguardRun:
    """The scanner's own path from content to parsed results, as the scanning user."""
    scratch = work / "oscap"
    oscap.ensure_writable_by_sandbox(scratch)
    os.chown(scratch, user.uid, user.gid)
    resolved = content.resolve("oval", "real-feed", scratch / "feed",
                               override=content.ContentOverride(file=feed))  # fmt: skip
    box = scan_sandbox(user)
    env = oscap.environment(tree.root, scratch, tree.found, ARCH)
    canary = oscap.run_canary(box, env, scratch, tree.found.info.family, timeout=600)
    installed = pipeline.installed_packages(tree.found, tree.root, canary)
    filtered = pipeline.evaluate_feed(box, env, resolved, installed, scratch, timeout=900,
                                      rootfs=tree.root, arch=ARCH)  # fmt: skip
    assert filtered is not None, "the pre-filter did not run (no package inventory)"
    parsed = parse_oval_results(scratch / "oval-results.xml")
    assert pipeline.oval_failure(parsed) is None, parsed.errors
    return ScapguardRun(true_definitions(scratch / "oval-results.xml"),
                        {f.definition for f in parsed.findings},
                        {p.name for f in parsed.findings for p in f.packages}, filtered.definitions,
                        filtered.kept)  # fmt: skip


@pytest.fixture
def work(shared_dir: Path, scan_user: ScanUser) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="realfeed-", dir=shared_dir))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_findings_equal_plain_oscap_on_real_feed(
    name: str, work: Path, scan_user: ScanUser
) -> None:
    case = CASES[name]
    feed = feed_file(case.feed)
    doc = feed_bytes(feed)
    tree = build_tree(case, doc, work / "tree")
    # The tree is the scanning user's (uid 0 in its namespace), as an unpacked image would be.
    subprocess.run(["chown", "-R", f"{scan_user.uid}:{scan_user.gid}", str(tree.root)], check=True)
    feed_xml = work / "feed.xml"  # plain oscap reads neither gzip nor our copies
    feed_xml.write_bytes(doc)
    plain = plain_oscap(tree, feed_xml, work, oci=case.format == "oci")
    ours = scapguard(tree, feed, work, scan_user)
    if case.format == "oci":  # the manifest scapguard wrote is dpkg-query's, byte for byte
        written = work / "oscap" / "oci-manifest" / ocifeed.MANIFEST
        assert written.read_text(encoding="utf-8") == dpkg_query_manifest(tree.root)
        assert ":amd64\t" in written.read_text(encoding="utf-8")  # Multi-Arch: same names
        vulnerable = set(list(tree.packages)[: (case.count + 1) // 2])  # choose(): first half
        assert ours.packages and ours.packages <= vulnerable, (ours.packages, vulnerable)
    only_ours, only_plain = sorted(ours.true - plain), sorted(plain - ours.true)
    assert ours.true == plain, f"{name}: only scapguard {only_ours}, only oscap {only_plain}"
    # Non-trivial: the vulnerable half made definitions true, the fixed half left some false.
    assert len(plain) >= case.min_true, (name, tree.packages, plain)
    assert ours.findings <= plain and bool(ours.findings) == bool(plain), (ours.findings, plain)
    assert ours.kept <= ours.definitions
    if case.mostly_filtered:
        assert ours.kept < ours.definitions / 2, (ours.kept, ours.definitions)


def test_one_below_is_lower() -> None:
    assert one_below("0:60.6.1-1.el8") == "0:60.6.1-1.el7"
    assert one_below("1:4.14-1.1+deb7u1") == "1:4.14-1.1+deb7u0"
    assert one_below("0:20180508gitee3198e672e2-9.el8_0.1") == "0:20180508gitee3198e672e2-9.el8_0.0"
    assert one_below("1.10-0") == "1.09-0"
    assert one_below("2.0-0") == "1.0-0"


@pytest.mark.parametrize(
    "name",
    [
        # oscap 1.3.7 aborts (SIGABRT, exit 134) on it under --skip-valid.
        "other/vuls-data-update__suse.linux.enterprise.15-affected.xml.gz",
        # Red Hat OVAL v2 (rhel-8/9 .oval.xml) excerpts: each keeps one object_ref to a
        # local_variable left out of the excerpt (PROVENANCE.md); plain and as published (bz2).
        "redhat/claircore__rhel-8-rpm-unpatched.xml",
        "redhat/vuls-data-update__rhel-9-including-unpatched.oval.xml",
        "redhat/vuls-data-update__rhel-9-including-unpatched.oval.xml.bz2",
    ],
)
def test_refused_broken_excerpt_is_content_invalid(work: Path, name: str) -> None:
    """Real excerpts whose references dangle: the scanner refuses them as ContentInvalid,
    naming the file, before oscap (which aborts or errors on them)."""
    feed = feed_file(name)
    with pytest.raises(ScanFailure) as info:
        content.resolve("oval", "suse", work / "feed", override=content.ContentOverride(file=feed))
    assert info.value.reason == ErrorReason.CONTENT_INVALID
    assert str(feed) in info.value.message and "does not define" in info.value.message
