"""Sync runs, cursors, quarantine, scheduler leases (owned by the sync engine)."""

from __future__ import annotations
