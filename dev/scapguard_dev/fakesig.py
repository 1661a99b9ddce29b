"""A stand-in for ``gpg`` under ``rpmsign``: a header signature "by" any key id, for fixtures.

Vendor OVAL feeds (Red Hat, SUSE, Photon) only count a package as theirs when its signature's
key id is the vendor's (``rpminfo_state/signature_keyid``). Fixture packages cannot be signed
with those keys, but the probe only reads the issuer key id of the signature packet in the rpm
header. ``rpmsign --addsign`` runs ``%__gpg_sign_cmd`` with the signed data on stdin and reads
the detached signature from a file; this module is that command. It writes an OpenPGP v4 RSA
signature packet (RFC 4880 5.2.3) whose issuer subpacket is the requested key id and whose
"hash left 16 bits" are right, so rpm reports it ``NOKEY`` (no public key to check it against)
and installs the package, never ``BAD``. The RSA value itself is filler: nothing can verify it.

Only for test fixtures: the result proves nothing about who built the package.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

_CREATED: Final = 1704067200  # 2024-01-01, for reproducible packages
_RSA: Final = 1
_SHA256: Final = 8
_SUBPACKET_CREATED: Final = 2
_SUBPACKET_ISSUER: Final = 16
_FILLER_BITS: Final = 2048


def signature_packet(data: bytes, keyid: str) -> bytes:
    """A binary-document v4 signature packet over ``data`` naming ``keyid`` as issuer."""
    issuer = bytes.fromhex(keyid)
    if len(issuer) != 8:
        raise ValueError(f"key id {keyid!r} is not 16 hex digits")
    hashed = bytes([5, _SUBPACKET_CREATED]) + struct.pack(">I", _CREATED)
    head = bytes([4, 0x00, _RSA, _SHA256]) + struct.pack(">H", len(hashed)) + hashed
    trailer = b"\x04\xff" + struct.pack(">I", len(head))
    digest = hashlib.sha256(data + head + trailer).digest()
    unhashed = bytes([9, _SUBPACKET_ISSUER]) + issuer
    filler = b"\x80" + b"\x11" * (_FILLER_BITS // 8 - 1)
    body = (
        head
        + struct.pack(">H", len(unhashed))
        + unhashed
        + digest[:2]
        + struct.pack(">H", _FILLER_BITS)
        + filler
    )
    return bytes([0x89]) + struct.pack(">H", len(body)) + body  # old format, tag 2, 2-byte len


def sign_command(keyid: str) -> str:
    """The ``%__gpg_sign_cmd`` value (rpm splits it: executable, argv[0], arguments...).

    argv[0] is the interpreter's full path too: a virtualenv's python finds its packages from
    argv[0], and a bare "python" would be looked up on PATH.
    """
    bytes.fromhex(keyid)  # refuse anything but hex before it reaches a command line
    python = sys.executable
    return f"{python} {python} -m {__name__} {keyid} %{{__signature_filename}}"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        sys.stderr.write("usage: python -m scapguard_dev.fakesig KEYID SIGFILE\n")
        return 2
    data = sys.stdin.buffer.read()
    Path(args[1]).write_bytes(signature_packet(data, args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
