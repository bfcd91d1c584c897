"""Canonical record (plaintext) -> the stored columns of gateway/store/records.py, and back.

* ``subject_key`` = the keyed blind index of the normalised ID (``ids.index_material``);
* ``national_id`` and ``personal`` fields are sealed, bound to (dataset, field, subject_key);
* ``id_masked`` keeps the display form (first 6, last 4);
* ``content_hash`` is a keyed HMAC (the blind-index key) over the canonical *plaintext* values of
  the stored columns: re-sealing with fresh random nonces does not look like a change, and the
  hash, unlike a plain digest beside a known subject key, cannot confirm a guessed name or phone.

The sync engine keys first and hashes (cheap), compares with the stored hash, and seals only the
rows that are inserted or updated: an unchanged record is never sealed again.

``RowFingerprints`` goes one step earlier: a keyed fingerprint of the *native* row, under a key
derived from the blind_index key and everything that decides what a native row maps to (dataset,
source, mapping name and version, plugin versions, stored fields). A row whose fingerprint is stored
on a record was mapped to that record before and would be again: the sync engine counts it unchanged
without mapping, validating, keying or hashing it. Like the content hash, it confirms nothing
without the key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import ids

if TYPE_CHECKING:
    from .connectors import RawRecords
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
        "fingerprint",
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
        # (keyring generation, HMAC with the key and the "content" prefix absorbed): rebuilt when
        # the keyring changes, so the hash follows the active blind_index key like blind_index().
        self._content: tuple[int, Any] = (-1, None)

    # -- keys and hashes (every row) --------------------------------------------------------------

    def subject_key(self, record: Mapping[str, Any]) -> str:
        number = record.get("id_number")
        if number.__class__ is str and len(number) == 18 and not number.isspace():
            id_type = record.get("id_type")
            if id_type is None or id_type == "1" or id_type == "":
                # The common case, as below: a resident ID (normalised) is its own index material.
                return self.protector.blind_index(number)
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
        """Keyed hash of the plaintext values of every stored field, in a fixed order: the hex of
        HMAC(active blind_index key, "content" GS dataset GS values joined by RS)."""
        generation, template = self._content
        keyring = self.protector.keyring
        if generation != keyring.generation:
            from .crypto import hmac_template

            key = keyring.active("blind_index")
            template = hmac_template(
                key.material,
                self.protector.suite.hash_name,
                ("content\x1d" + self.dataset + "\x1d").encode(),
            )
            self._content = (keyring.generation, template)
        date = dt.date
        text = "\x1e".join(
            [
                v
                if (c := v.__class__) is str
                else ""
                if v is None
                else v.isoformat()
                if c is date
                else canonical_text(v)
                for v in map(record.get, self.fields)
            ]
        )
        mac = template.copy()
        mac.update(text.encode())
        return mac.hexdigest()[:64]

    def key_and_hash(self, record: Mapping[str, Any]) -> tuple[str, str, str]:
        """(subject_key, record_key, content_hash); raises KeyProblem."""
        subject_key = self.subject_key(record)
        return subject_key, self.record_key(record, subject_key), self.content_hash(record)

    # -- sealing (inserted and updated rows only) -------------------------------------------------

    def stored_columns(self, record: Mapping[str, Any], subject_key: str) -> dict[str, Any]:
        """The table's data columns for ``record``: sealed where sensitive, plain otherwise."""
        columns = self.stored_batch([record], [subject_key])
        return {name: values[0] for name, values in columns.items()}

    def stored_batch(
        self, records: Sequence[Mapping[str, Any]], subject_keys: Sequence[str]
    ) -> dict[str, list[Any]]:
        """``stored_columns`` of many records at once, column by column (each sealed field sealed
        in one ``Protector.seal_many`` call): column name -> one value per record."""
        out: dict[str, list[Any]] = {
            f: [r.get(f) for r in records] for f in self.plain if f != "id_type"
        }
        out["id_type"] = [r.get("id_type") or "1" for r in records]
        seal_bound = self.protector.seal_bound
        bound = self.protector.record_aads(subject_keys)  # once per row, for every sealed field
        for name in self.sealed:
            values = [r.get(name) for r in records]
            if all(type(v) is str and v for v in values):  # the common case: every row has it
                out[name] = seal_bound(values, dataset=self.dataset, field=name, bound=bound)
                continue
            todo = [i for i, v in enumerate(values) if v is not None and v != ""]
            sealed: list[Any] = [None] * len(values)
            if todo:
                tokens = seal_bound(
                    [v if type(v := values[i]) is str else canonical_text(v) for i in todo],
                    dataset=self.dataset,
                    field=name,
                    bound=[bound[i] for i in todo],
                )
                for i, token in zip(todo, tokens, strict=True):
                    sealed[i] = token
            out[name] = sealed
        mask = ids.mask
        out["id_masked"] = [
            mask(str(number)) if (number := r.get("id_number")) else None for r in records
        ]
        out["subject_key"] = list(subject_keys)
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


class RowFingerprints:
    """Keyed fingerprints of native rows (16 bytes) for one job configuration, ``context``: what
    decides how a native row maps (dataset, source, mapping name and version, plugin versions,
    stored fields). The key is derived from the active blind_index key, so a rotation, like any
    change of the context, makes every stored fingerprint stale: those rows are mapped again.

    ``of``/``many`` fingerprint a row's data (``row_text``); ``many_raw`` fingerprints the source
    bytes a connector read a row from (``connectors.RawRecords``) under a key derived further for
    the record's form (encoding, dialect, header): equal bytes in the same form are equal rows, and
    no row needs to be built to be recognised. The two kinds never match each other (different
    keys): a source that starts giving raw records has its rows mapped once more."""

    SIZE = 16

    def __init__(self, protector: Protector, context: str):
        key = protector.keyring.active("blind_index")
        self._suite = protector.suite
        self._derived = protector.suite.mac(
            key.material, b"gateway-row-fingerprint-v1\x1d" + context.encode()
        )
        self._template = hmac.new(self._derived, digestmod=protector.suite.hash_name)
        self._raw: dict[str, Any] = {}  # form -> keyed hash object to copy per record

    def of(self, data: Mapping[str, Any]) -> bytes:
        mac = self._template.copy()
        mac.update(row_text(data).encode("utf-8", "surrogatepass"))
        return mac.digest()[: self.SIZE]

    def many(self, rows: Sequence[Mapping[str, Any] | None]) -> list[bytes | None]:
        """One fingerprint per row; None for a None row (a row read with problems)."""
        copy = self._template.copy
        size = self.SIZE
        out: list[bytes | None] = []
        append = out.append
        for data in rows:
            if data is None:
                append(None)
                continue
            mac = copy()
            mac.update(row_text(data).encode("utf-8", "surrogatepass"))
            append(mac.digest()[:size])
        return out

    def _raw_template(self, form: str) -> Any:
        template = self._raw.get(form)
        if template is None:
            key = self._suite.mac(self._derived, b"raw\x1d" + form.encode("utf-8", "surrogatepass"))
            if self._suite.hash_name == "sha256":
                # Keyed BLAKE2b (a MAC by construction): a third of HMAC-SHA256's cost per row.
                template = hashlib.blake2b(key=key, digest_size=self.SIZE)
            else:  # the national suite keeps its SM3-based MAC
                template = hmac.new(key, digestmod=self._suite.hash_name)
            self._raw[form] = template
        return template

    def of_raw(self, form: str, record: bytes) -> bytes:
        mac = self._raw_template(form).copy()
        mac.update(record)
        return mac.digest()[: self.SIZE]

    def many_raw(self, raw: RawRecords) -> list[bytes | None]:
        """One fingerprint per record of ``raw``, each under its form's key."""
        records = raw.records
        forms = list(raw.forms)
        out: list[bytes | None] = []
        append = out.append
        size = self.SIZE
        for k, (start, form) in enumerate(forms):
            end = forms[k + 1][0] if k + 1 < len(forms) else len(records)
            out.extend([None] * (start - len(out)))  # rows no form covers: none (never the case)
            copy = self._raw_template(form).copy
            part = records[start:end]
            if size == copy().digest_size:
                for record in part:
                    mac = copy()
                    mac.update(record)
                    append(mac.digest())
            else:
                for record in part:
                    mac = copy()
                    mac.update(record)
                    append(mac.digest()[:size])
        out.extend([None] * (len(records) - len(out)))
        return out


def row_text(data: Mapping[str, Any]) -> str:
    """An unambiguous text of a native row, names and values in the row's order: two rows give
    the same text only if they have the same names, in the same order, with equal values of the
    same types. Text-only rows (CSV) take a cheap joined form; anything else, or text holding the
    separators, takes the repr of the items (exact for str, int, float, Decimal, dates, None)."""
    try:
        names = "\x1f".join(data)
        values = "\x1f".join(data.values())
    except TypeError:  # a value (or name) that is not text
        return "r" + repr(list(data.items()))
    gaps = len(data) - 1
    if names.count("\x1f") == gaps and values.count("\x1f") == gaps and "\x1e" not in names:
        return "s" + names + "\x1e" + values
    return "r" + repr(list(data.items()))


def sealed_token_key_ids(row: Mapping[str, Any], fields: Iterable[str]) -> set[str]:
    """The key ids the row's sealed tokens were made with ("<key id>:<b64>")."""
    return {str(row[f]).partition(":")[0] for f in fields if row.get(f)}
