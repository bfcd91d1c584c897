"""Canonical record (plaintext) -> the stored columns of gateway/store/records.py, and back.

* ``subject_key`` = the keyed blind index of the normalised ID (``ids.index_material``);
* ``national_id`` and ``personal`` fields are sealed, bound to (dataset, field, subject_key);
* ``id_masked`` keeps the display form (first 6, last 4);
* ``content_hash`` is a keyed HMAC (the blind-index key) over the canonical *plaintext* values of
  the stored columns: re-sealing with fresh random nonces does not look like a change, and the
  hash, unlike a plain digest beside a known subject key, cannot confirm a guessed name or phone.

The sync engine keys first and hashes (cheap), compares with the stored hash, and seals only the
rows that are inserted or updated: an unchanged record is never sealed again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import ids

if TYPE_CHECKING:
    from .crypto import Protector

SEALED_CLASSES = frozenset({"national_id", "personal"})
# Sealed whatever a mapping says: every dataset's ID number and name (design.md, † and *).
ALWAYS_SEALED = frozenset({"id_number", "name"})
# Columns the engine fills itself; every other column of a dataset table is a canonical field.
BOOKKEEPING = frozenset(
    {
        "id",
        "source",
        "record_key",
        "subject_key",
        "id_masked",
        "content_hash",
        "removed",
        "first_run_id",
        "last_run_id",
        "updated_at",
    }
)
RECORD_KEY_MAX = 160  # records.record_key is String(160)


class KeyProblem(Exception):
    """The record cannot be keyed (no ID number, a key field missing): it goes to quarantine."""

    def __init__(self, field: str, code: str, message: str):
        super().__init__(message)
        self.field, self.code, self.message = field, code, message


def canonical_text(value: Any) -> str:
    """One stable text form per value, the same for what the mapper returns and what the
    database gives back (date vs date, 3 vs "3", True vs 1), so hashes agree across both."""
    if value is None:
        return ""
    if value is True:
        return "1"
    if value is False:
        return "0"
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


class RecordProtector:
    """Protects records of one dataset for one mapping (its sensitivity and record key fields)."""

    def __init__(
        self,
        protector: Protector,
        dataset: str,
        columns: Sequence[str],
        sensitivity: Mapping[str, str],
        record_key_fields: Sequence[str] = ("subject_key",),
    ):
        self.protector = protector
        self.dataset = dataset
        # The canonical fields that are stored: the table's columns that are not bookkeeping.
        self.fields: tuple[str, ...] = tuple(sorted(c for c in columns if c not in BOOKKEEPING))
        self.sealed: tuple[str, ...] = tuple(
            f for f in self.fields if f in ALWAYS_SEALED or sensitivity.get(f) in SEALED_CLASSES
        )
        self.plain: tuple[str, ...] = tuple(f for f in self.fields if f not in self.sealed)
        self.record_key_fields = tuple(record_key_fields) or ("subject_key",)
        self._extra_key_fields = tuple(f for f in self.record_key_fields if f != "subject_key")

    # -- keys and hashes (every row) --------------------------------------------------------------

    def subject_key(self, record: Mapping[str, Any]) -> str:
        number = record.get("id_number")
        if number is None or str(number).strip() == "":
            raise KeyProblem("id_number", "missing_id", "no ID number: the record cannot be keyed")
        id_type = str(record.get("id_type") or "1")
        try:
            material = ids.index_material(id_type, str(number))
        except ValueError:
            raise KeyProblem("id_number", "bad_id", "the ID number is not normalised") from None
        return self.protector.blind_index(material)

    def record_key(self, record: Mapping[str, Any], subject_key: str) -> str:
        if not self._extra_key_fields:
            return subject_key
        parts = [subject_key]
        for name in self._extra_key_fields:
            value = record.get(name)
            if value is None or value == "":
                raise KeyProblem(
                    name, "missing_key", f"{name} is empty but is part of the record key"
                )
            parts.append(canonical_text(value))
        key = "|".join(parts)
        if len(key) > RECORD_KEY_MAX:
            # Keep the subject key readable in front (re-indexing replaces it in place).
            rest = hashlib.sha256("|".join(parts[1:]).encode()).hexdigest()[:40]
            key = f"{subject_key}|#{rest}"
        return key

    def content_hash(self, record: Mapping[str, Any]) -> str:
        """Keyed hash of the plaintext values of every stored field, in a fixed order."""
        text = "\x1e".join(
            [v if type(v) is str else canonical_text(v) for v in map(record.get, self.fields)]
        )
        token = self.protector.blind_index("content\x1d" + self.dataset + "\x1d" + text)
        return token.rpartition(":")[2][:64]

    def key_and_hash(self, record: Mapping[str, Any]) -> tuple[str, str, str]:
        """(subject_key, record_key, content_hash); raises KeyProblem."""
        subject_key = self.subject_key(record)
        return subject_key, self.record_key(record, subject_key), self.content_hash(record)

    # -- sealing (inserted and updated rows only) -------------------------------------------------

    def stored_columns(self, record: Mapping[str, Any], subject_key: str) -> dict[str, Any]:
        """The table's data columns for ``record``: sealed where sensitive, plain otherwise."""
        out: dict[str, Any] = {f: record.get(f) for f in self.plain}
        seal = self.protector.seal
        dataset = self.dataset
        for name in self.sealed:
            value = record.get(name)
            out[name] = (
                None
                if value is None or value == ""
                else seal(canonical_text(value), dataset=dataset, field=name, record=subject_key)
            )
        if not out.get("id_type"):
            out["id_type"] = "1"
        number = record.get("id_number")
        out["id_masked"] = ids.mask(str(number)) if number else None
        out["subject_key"] = subject_key
        return out

    # -- opening (removals to deliver, re-indexing) -----------------------------------------------

    def open_row(self, row: Mapping[str, Any], *, subject_key: str | None = None) -> dict[str, Any]:
        """A stored row back to its canonical plaintext (``subject_key`` is the AAD it was sealed
        under, the row's own by default). Raises crypto.CryptoError if a token does not open."""
        sk = subject_key or row["subject_key"]
        out: dict[str, Any] = {f: row.get(f) for f in self.plain}
        for name in self.sealed:
            token = row.get(name)
            out[name] = (
                None
                if token is None
                else self.protector.open(token, dataset=self.dataset, field=name, record=sk)
            )
        out["subject_key"] = row.get("subject_key")
        return out


def sealed_token_key_ids(row: Mapping[str, Any], fields: Iterable[str]) -> set[str]:
    """The key ids the row's sealed tokens were made with ("<key id>:<b64>")."""
    return {str(row[f]).partition(":")[0] for f in fields if row.get(f)}
