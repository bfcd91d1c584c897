"""Opaque pagination cursors: base64url of a small JSON object, versioned.

A cursor only says where a page ended; forging one moves the caller's position and nothing else
(every page is still filtered by the caller's policy), so it is not signed.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from .problems import Problem

VERSION = 1


def encode(**position: Any) -> str:
    doc = {"v": VERSION, **position}
    raw = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode(token: str, *required: str) -> dict[str, Any]:
    """The position of a cursor made by ``encode``; 400 invalid-cursor for anything else."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        doc = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Problem("invalid-cursor", "not a cursor from this gateway") from None
    if not isinstance(doc, dict) or doc.get("v") != VERSION or any(k not in doc for k in required):
        raise Problem("invalid-cursor", "not a cursor from this gateway (or an older format)")
    return doc
