"""What the API keeps between requests: nonces seen within the signature window."""

from __future__ import annotations
