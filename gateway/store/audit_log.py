"""The audit log's tables: entries, the subject keys each touched, signed checkpoints."""

from __future__ import annotations
