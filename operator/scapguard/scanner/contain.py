"""Keep every symlink of an unpacked tree pointing inside it.

oscap reads the tree through ``OSCAP_PROBE_ROOT``, prefixing paths but resolving symlinks with
the real root: an image's ``/etc/passwd -> /var/run/secrets/...`` would make a probe read the
scanner's own files into the report. After unpacking, every symlink is rewritten (owner kept) to
the canonical relative form ``../`` * k + clean path, where k never exceeds the link's depth: the
kernel then climbs only real directories of the tree and never above its root, and each link it
meets on the way is itself canonical. Absolute targets become the same path inside the tree, as
a chroot would see them; ``..`` beyond the root is clamped at the root like in a chroot.

A directory that cannot be listed (a rootless unpack of a ``0111`` directory) may hold links
nobody checked, so it stops the scan (:class:`ContainmentError`, exit 1 naming the directory:
``UnpackFailed``) rather than being skipped.

Run inside the scan's user namespace (the tree's owners are mapped there):
``python -m scapguard.scanner.contain ROOTFS``.
"""

from __future__ import annotations

import logging
import os
import posixpath
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)


class ContainmentError(Exception):
    """Part of the tree could not be walked, so its symlinks could not be contained."""


def canonical_target(link_dir: str, target: str) -> str:
    """The canonical relative target for a link in ``link_dir`` ('' for the root, no leading /).

    ``link_dir`` and the result use '/' separators; the in-tree target is resolved lexically.
    """
    base = "/" if target.startswith("/") else "/" + link_dir
    joined = posixpath.normpath(posixpath.join(base, target))
    # normpath keeps a leading '//' and clamps '/..' to '/': both are the tree's root here.
    absolute = "/" + joined.lstrip("/")
    rel = posixpath.relpath(absolute, "/" + link_dir)
    return rel


def contain_tree(root: Path) -> int:
    """Rewrite the symlinks of ``root`` that are not canonical; return how many were changed."""
    changed = 0
    root_s = os.fspath(root)

    def unlistable(exc: OSError) -> None:
        rel = os.path.relpath(os.fspath(exc.filename or root_s), root_s)
        where = "/" if rel == "." else "/" + rel
        hint = " (--id-mapping=userns can read it)" if isinstance(exc, PermissionError) else ""
        raise ContainmentError(
            f"cannot list {where} in the image ({exc.strerror}): "
            f"symlinks under it cannot be contained{hint}"
        ) from exc

    for dirpath, dirnames, filenames in os.walk(root_s, onerror=unlistable, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root_s)
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in (*dirnames, *filenames):
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                continue
            target = os.readlink(path)
            wanted = canonical_target(rel_dir, target)
            if wanted == target:
                continue
            st = os.lstat(path)
            os.unlink(path)
            os.symlink(wanted, path)
            os.lchown(path, st.st_uid, st.st_gid)
            changed += 1
            log.debug("contained symlink %s: %s -> %s", path, target, wanted)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: python -m scapguard.scanner.contain ROOTFS\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        count = contain_tree(Path(args[0]))
    except ContainmentError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    log.info("rewrote %s symlinks under %s", count, args[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
