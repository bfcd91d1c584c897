"""Stored rows -> what a department may see of them, as its policy rule says.

How the person is identified follows the rule's ``ids``:

* ``masked``      ``id_masked``: first 6 and last 4 characters, nothing else;
* ``subject_key`` ``subject_key``: the blind index; it can be sent back in later lookups;
* ``sealed``      ``id_number: {"sealed": "x25519:..."}``: the ID number opened from the store and
  sealed to the department's X25519 public key (``departments.X.public_key``), so that only the
  department's own private key opens it. The associated data is ``"<dataset>/<field>"``.

Other fields are returned only when the rule lists them. ``national_id``-class fields (student
number, disability certificate number) are treated like the ID: masked, or sealed under ``sealed``;
``personal`` fields (name, phone, address) are sealed under ``sealed`` and returned as text
otherwise (the rule allowed them for this purpose). Plain fields are returned as they are stored.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import ids
from ..crypto import Sealer, read_public_key
from ..errors import ConfigError, GatewayError
from ..schemas import dataset_fields

if TYPE_CHECKING:
    from ..config import AllowRule, DepartmentSettings
    from ..site import Site

# Identity columns: governed by the rule's ``ids``, never requested as fields.
IDENTITY_FIELDS = frozenset({"id_number", "subject_key", "id_masked", "id_type"})

_public_keys: dict[tuple[str, str], bytes] = {}
_lock = threading.Lock()


def public_key_of(site: Site, department: DepartmentSettings) -> bytes:
    """The department's X25519 public key (read once per process)."""
    if not department.public_key:
        raise ConfigError(
            f'departments.{department.name}.public_key: needed for ids = "sealed" '
            "(the department's X25519 public key file)"
        )
    path = str(site.path(department.public_key))
    key = _public_keys.get((department.name, path))
    if key is None:
        try:
            key = read_public_key(path)
        except GatewayError as exc:
            raise ConfigError(f"departments.{department.name}.public_key: {exc}") from None
        with _lock:
            _public_keys[(department.name, path)] = key
    return key


def sealed_aad(dataset: str, field: str) -> bytes:
    return f"{dataset}/{field}".encode()


def jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def requestable_fields(dataset: str) -> list[str]:
    return [f for f in dataset_fields(dataset) if f not in IDENTITY_FIELDS]


class Discloser:
    """Turns rows of one dataset into response records for one department and rule."""

    def __init__(
        self,
        site: Site,
        dataset: str,
        department: DepartmentSettings,
        rule: AllowRule,
        fields: Sequence[str],
    ):
        self.site = site
        self.dataset = dataset
        self.mode = rule.ids
        self.fields = list(fields)
        infos = dataset_fields(dataset)
        self.classes = {f: infos[f].sensitivity for f in self.fields}
        self.protector = site.protector
        self.keyring = site.keyring
        # One ephemeral key pair per response: a 10,000-subject answer costs one X25519 exchange.
        self.sealer = Sealer(public_key_of(site, department)) if self.mode == "sealed" else None

    @property
    def disclosed_fields(self) -> list[str]:
        """What the audit entry lists: the identity as returned, then the fields."""
        identity = {"masked": "id_masked", "subject_key": "subject_key", "sealed": "id_number"}
        return [identity[self.mode], *self.fields]

    def _open(self, value: Any, field: str, subject_key: str) -> Any:
        """Plaintext of a stored value (sealed columns are opened; plain ones returned as is)."""
        if not isinstance(value, str):
            return value
        key_id = value.partition(":")[0]
        if key_id in self.keyring and self.keyring.get(key_id).purpose == "seal":
            return self.protector.open(value, dataset=self.dataset, field=field, record=subject_key)
        return value

    def _seal(self, plaintext: str, field: str) -> dict[str, str]:
        assert self.sealer is not None
        return {"sealed": self.sealer.seal(plaintext, aad=sealed_aad(self.dataset, field))}

    def identity(self, row: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"record_id": int(row["id"]), "id_type": row.get("id_type")}
        if self.mode == "masked":
            out["id_masked"] = row.get("id_masked")
        elif self.mode == "subject_key":
            out["subject_key"] = row["subject_key"]
        else:
            token = row.get("id_number")
            if token:
                plain = self._open(token, "id_number", row["subject_key"])
                out["id_number"] = self._seal(plain, "id_number")
        return out

    def record(self, row: Mapping[str, Any]) -> dict[str, Any]:
        out = self.identity(row)
        subject_key = row["subject_key"]
        for field in self.fields:
            value = row.get(field)
            cls = self.classes[field]
            if value is None or cls == "plain":
                out[field] = jsonable(value)
                continue
            plain = self._open(value, field, subject_key)
            if self.mode == "sealed":
                out[field] = self._seal(str(plain), field)
            elif cls == "national_id":
                out[field] = ids.mask(str(plain))
            else:
                out[field] = plain
        return out
