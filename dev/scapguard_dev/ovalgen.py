"""Hand-written OVAL for the fixture images, in each vendor's own style.

Derived from FIXTURE_PACKAGES: for every package whose vulnerable and patched
versions differ, a definition "PACKAGE earlier than PATCHED" (true on the
vulnerable image, false on the patched one), plus definitions that are false on
both (a package no image has; a fixed version equal to the installed one). Used
by the scanner tests, the operator's end-to-end tests and the demo; the real
vendor feeds are far too large for a test and change every day.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from lxml import etree

from scapguard.results.model import Severity
from scapguard_dev.fixtureimages import FIXTURE_PACKAGES, Distro

DEF_NS = "http://oval.mitre.org/XMLSchema/oval-definitions-5"
LINUX_NS = f"{DEF_NS}#linux"
COMMON_NS = "http://oval.mitre.org/XMLSchema/oval-common-5"


@dataclass(frozen=True)
class Expected:
    cve: str
    package: str
    fixed: str  # as the finding reports it (a 0: epoch dropped)
    severity: Severity


def d(tag: str) -> str:
    return f"{{{DEF_NS}}}{tag}"


def lx(tag: str) -> str:
    return f"{{{LINUX_NS}}}{tag}"


class Oval:
    """A small OVAL definitions document written element by element."""

    def __init__(self) -> None:
        # lxml takes None as the default namespace's prefix; its stubs only know str keys.
        nsmap = cast(dict[str, str], {None: DEF_NS, "oval": COMMON_NS, "linux-def": LINUX_NS})
        self.root = etree.Element(d("oval_definitions"), nsmap=nsmap)
        gen = etree.SubElement(self.root, d("generator"))
        etree.SubElement(gen, f"{{{COMMON_NS}}}schema_version").text = "5.11.2"
        etree.SubElement(gen, f"{{{COMMON_NS}}}timestamp").text = "2024-06-01T00:00:00"
        self.sections = {
            name: etree.SubElement(self.root, d(name))
            for name in ("definitions", "tests", "objects", "states", "variables")
        }
        self.counter = 0

    def definition(self, ident: str, cls: str, title: str) -> tuple[etree._Element, etree._Element]:
        """A definition; returns (metadata, criteria)."""
        el = etree.SubElement(self.sections["definitions"], d("definition"), id=ident,
                              version="1", attrib={"class": cls})  # fmt: skip
        meta = etree.SubElement(el, d("metadata"))
        etree.SubElement(meta, d("title")).text = title
        etree.SubElement(meta, d("description")).text = "scapguard test definition"
        return meta, etree.SubElement(el, d("criteria"), operator="AND")

    def package_test(
        self,
        probe: str,
        namespace: str,
        name: str | None,
        fixed_evr: str | None,
        datatype: str = "",
        *,
        var_ref: str | None = None,
        version_pattern: str | None = None,
    ) -> str:
        """A {probe}_test on an object by name (or variable) with a state "evr less than
        fixed_evr" or "version matches version_pattern"; returns the test id."""
        self.counter += 1
        n = self.counter
        test_id, obj_id, ste_id = (f"oval:{namespace}:{k}:{n}" for k in ("tst", "obj", "ste"))
        test = etree.SubElement(
            self.sections["tests"],
            lx(f"{probe}_test"),
            id=test_id,
            version="1",
            check="at least one",
            check_existence="at_least_one_exists",
            comment=str(name),
        )
        etree.SubElement(test, lx("object"), object_ref=obj_id)
        obj = etree.SubElement(
            self.sections["objects"], lx(f"{probe}_object"), id=obj_id, version="1"
        )
        if var_ref is not None:
            etree.SubElement(obj, lx("name"), var_ref=var_ref, var_check="at least one")
        else:
            etree.SubElement(obj, lx("name")).text = name
        if fixed_evr is not None or version_pattern is not None:
            etree.SubElement(test, lx("state"), state_ref=ste_id)
            state = etree.SubElement(
                self.sections["states"], lx(f"{probe}_state"), id=ste_id, version="1"
            )
            if fixed_evr is not None:
                etree.SubElement(
                    state, lx("evr"), datatype=datatype, operation="less than"
                ).text = fixed_evr
            else:
                etree.SubElement(
                    state, lx("version"), operation="pattern match"
                ).text = version_pattern
        return test_id  # fmt: skip

    def text(self) -> str:
        if len(self.sections["variables"]) == 0:
            self.root.remove(self.sections["variables"])
        return etree.tostring(self.root, xml_declaration=True, encoding="UTF-8").decode()


def criterion(criteria: etree._Element, test_ref: str, comment: str) -> None:
    etree.SubElement(criteria, d("criterion"), test_ref=test_ref, comment=comment)


def reference(meta: etree._Element, source: str, ref_id: str) -> None:
    etree.SubElement(meta, d("reference"), source=source, ref_id=ref_id,
                     ref_url=f"https://example.invalid/{ref_id}")  # fmt: skip


def changed_packages(distro: Distro) -> list[tuple[str, str, str]]:
    vulnerable = FIXTURE_PACKAGES[(distro, "vulnerable")]
    patched = FIXTURE_PACKAGES[(distro, "patched")]
    return [(n, vulnerable[n], patched[n]) for n in sorted(patched) if vulnerable[n] != patched[n]]


def evr(version: str) -> str:
    return version if ":" in version.split("-")[0] else f"0:{version}"


def shown(version: str) -> str:
    full = evr(version)
    return full[2:] if full.startswith("0:") else full


def debian_oval() -> tuple[str, list[Expected]]:
    """Debian style: one definition per CVE, CVE reference, no severity, dpkginfo by name."""
    oval = Oval()
    expected: list[Expected] = []
    zlib = FIXTURE_PACKAGES[("debian12", "patched")]["zlib1g"]
    cases = [*changed_packages("debian12"), ("no-such-package", "", "1.0-1"), ("zlib1g", "", zlib)]
    for i, (name, _, fixed) in enumerate(cases, start=1):
        cve = f"CVE-2099-{1000 + i}"
        meta, crit = oval.definition(f"oval:org.debian:def:{i}", "vulnerability", f"{cve} {name}")
        reference(meta, "CVE", cve)
        etree.SubElement(etree.SubElement(meta, d("debian")), d("moreinfo")).text = "test"
        test = oval.package_test("dpkginfo", "org.debian", name, evr(fixed), "debian_evr_string")
        criterion(crit, test, f"{name} DPKG is earlier than {fixed}")
        if i <= len(cases) - 2:
            expected.append(Expected(cve, name, shown(fixed), "unknown"))
    return oval.text(), expected


UBUNTU_PRIORITIES: list[tuple[str, Severity]] = [
    ("high", "high"),
    ("medium", "medium"),
    ("negligible", "low"),
    ("critical", "critical"),
    ("untriaged", "unknown"),
]


def ubuntu_oval(
    priorities: list[tuple[str, Severity]] | None = None,
) -> tuple[str, list[Expected]]:
    """Ubuntu style: per-CVE priority in the advisory, binary names from a constant variable.

    ``priorities`` (Ubuntu priority, the severity it maps to) are used in turn, one per CVE.
    """
    priorities = priorities or UBUNTU_PRIORITIES
    oval = Oval()
    expected: list[Expected] = []
    for i, (name, _, fixed) in enumerate(changed_packages("ubuntu2204"), start=1):
        cve = f"CVE-2099-{2000 + i}"
        prio, severity = priorities[(i - 1) % len(priorities)]
        title = f"{cve} on Ubuntu 22.04 LTS (jammy) - {prio}."
        meta, crit = oval.definition(f"oval:com.ubuntu.jammy:def:{i}", "vulnerability", title)
        reference(meta, "CVE", cve)
        advisory = etree.SubElement(meta, d("advisory"), attrib={"from": "security@ubuntu.com"})
        etree.SubElement(advisory, d("severity")).text = "Medium"
        etree.SubElement(advisory, d("cve"), href=f"https://ubuntu.com/security/{cve}",
                         priority=prio, public="20240101").text = cve  # fmt: skip
        var_id = f"oval:com.ubuntu.jammy:var:{i}"
        variable = etree.SubElement(
            oval.sections["variables"],
            d("constant_variable"),
            id=var_id,
            version="1",
            datatype="string",
            comment="bins",
        )
        for value in (name, f"{name}-not-installed-dbg"):
            etree.SubElement(variable, d("value")).text = value
        test = oval.package_test("dpkginfo", "com.ubuntu.jammy", None, evr(fixed),
                                 "debian_evr_string", var_ref=var_id)  # fmt: skip
        criterion(crit, test, f"({name}) package in jammy was vulnerable but has been fixed")
        expected.append(Expected(cve, name, shown(fixed), severity))
    return oval.text(), expected


def rhel_oval() -> tuple[str, list[Expected]]:
    """Red Hat style: RHSA definitions (class patch) naming several CVEs with their own impact;
    criteria "RHEL 9 is installed" AND (package earlier than fixed OR ...)."""
    oval = Oval()
    expected: list[Expected] = []
    changed = changed_packages("rhel9")
    release = oval.package_test("rpminfo", "com.redhat.rhsa", "redhat-release", None,
                                version_pattern=r"^9[^\d]")  # fmt: skip

    def rhsa(num: int, severity: str, cves: list[tuple[str, str | None]],
             pkgs: list[tuple[str, str, str]]) -> None:  # fmt: skip
        title = f"RHSA-2099:{num:04d}: security update ({severity})"
        meta, crit = oval.definition(f"oval:com.redhat.rhsa:def:2099{num:04d}", "patch", title)
        reference(meta, "RHSA", f"RHSA-2099:{num:04d}")
        for cve, _ in cves:
            reference(meta, "CVE", cve)
        advisory = etree.SubElement(meta, d("advisory"), attrib={"from": "secalert@redhat.com"})
        etree.SubElement(advisory, d("severity")).text = severity
        for cve, impact in cves:
            attrs = {"href": f"https://access.redhat.com/security/cve/{cve}"}
            if impact is not None:
                attrs["impact"] = impact
            etree.SubElement(advisory, d("cve"), attrib=attrs).text = cve
        criterion(crit, release, "Red Hat Enterprise Linux 9 is installed")
        either = etree.SubElement(crit, d("criteria"), operator="OR")
        for name, _, fixed in pkgs:
            test = oval.package_test("rpminfo", "com.redhat.rhsa", name, evr(fixed), "evr_string")
            criterion(either, test, f"{name} is earlier than {evr(fixed)}")

    openssl = [c for c in changed if c[0].startswith("openssl")]
    others = [c for c in changed if not c[0].startswith("openssl")]
    # Three CVEs with their own impact; the advisory says Important.
    cves1: list[tuple[str, str | None, Severity]] = [
        ("CVE-2099-3001", "low", "low"),
        ("CVE-2099-3002", "important", "high"),
        ("CVE-2099-3003", "critical", "critical"),
    ]
    rhsa(1, "Important", [(c, i) for c, i, _ in cves1], openssl)
    for cve, _, sev in cves1:
        expected += [Expected(cve, name, shown(fixed), sev) for name, _, fixed in openssl]
    # One CVE without its own impact: the advisory's Moderate applies.
    rhsa(2, "Moderate", [("CVE-2099-3101", None)], others)
    expected += [Expected("CVE-2099-3101", n, shown(f), "medium") for n, _, f in others]
    # A package no image has.
    rhsa(3, "Critical", [("CVE-2099-3201", "critical")], [("no-such-package", "", "1.0-1.el9")])
    return oval.text(), expected


def feed_for(distro: Distro) -> tuple[str, list[Expected]]:
    if distro == "debian12":
        return debian_oval()
    if distro == "ubuntu2204":
        return ubuntu_oval()
    return rhel_oval()
