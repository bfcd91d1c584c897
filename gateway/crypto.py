"""Cipher suites, the keyring, blind indexes, sealed fields, signatures and masking.

Formats (stable: stored values and other departments depend on them):

* blind index  ``<key id>:<hex HMAC(blind_index key, material)>``; never a bare hash, so an ID number
  cannot be found by hashing guesses without the key.
* sealed field ``<key id>:<base64url(nonce | ciphertext | tag)>``, AEAD with a random 96-bit nonce;
  the associated data binds the key id, dataset, field and record (length-prefixed, so no part can
  be spliced into its neighbour). A token moved to another field, record or dataset does not open.
* sealed for a department ``x25519:<base64url(ephemeral public | nonce | ciphertext | tag)>``:
  X25519 ephemeral-static ECDH, HKDF-SHA256, AES-256-GCM. Used under both suites: the recipient is
  another department's client, and SM2 sealing is not offered by ``cryptography`` (HKDF-SM3 would
  work, but X25519 is not a national algorithm either, so it would buy no 密评 compliance).
* request signature (design.md, "Wire format"): ``hex(HMAC(secret, METHOD \\n PATH?QUERY \\n
  TIMESTAMP \\n NONCE \\n hex(HASH(body))))`` with the suite's hash and HMAC.
* keyring ``{"version": 1, "suite": ..., "keys": [{"id", "purpose", "created", "active",
  "material"}]}`` as a mode-0600 file or in an environment variable (``env:VAR``).

No function here puts key material, plaintext or an ID number into a message, repr or exception.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ConfigError, GatewayError, KeyringError

__all__ = [
    "DEFAULT_SUITE",
    "PURPOSES",
    "SUITES",
    "CryptoError",
    "Key",
    "Keyring",
    "Opener",
    "Protector",
    "SecretFile",
    "Sealer",
    "Suite",
    "encode_public_key",
    "get_suite",
    "key_id_of",
    "mask_id",
    "open_sealed",
    "parse_public_key",
    "read_public_key",
    "read_secret_file",
    "request_signature",
    "seal_for",
    "verify_request_signature",
    "verify_signature",
    "write_public_key",
    "write_secret_file",
    "x25519_keypair",
]


class CryptoError(GatewayError):
    """A sealed value, token, key or signature input is unusable. Never carries plaintext or keys."""


# --------------------------------------------------------------------------------------------
# Suites

NONCE_SIZE = 12  # 96-bit GCM nonce
TAG_SIZE = 16


class _Aead:
    """An AEAD bound to one key: ``encrypt -> ciphertext|tag``; ``decrypt`` raises CryptoError."""

    def encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        raise NotImplementedError

    def decrypt(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        raise NotImplementedError


class _AesGcm(_Aead):
    __slots__ = ("_aead",)

    def __init__(self, key: bytes):
        self._aead = AESGCM(key)

    def encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise CryptoError("authentication failed") from None


class _Sm4Gcm(_Aead):
    """SM4-GCM through the generic Cipher API: ``cryptography`` has no one-shot SM4 AEAD class."""

    __slots__ = ("_algorithm",)

    def __init__(self, key: bytes):
        self._algorithm = algorithms.SM4(key)

    def encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        enc = Cipher(self._algorithm, modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(aad)
        return enc.update(plaintext) + enc.finalize() + enc.tag

    def decrypt(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        if len(ciphertext) < TAG_SIZE:
            raise CryptoError("authentication failed")
        body, tag = ciphertext[:-TAG_SIZE], ciphertext[-TAG_SIZE:]
        dec = Cipher(self._algorithm, modes.GCM(nonce, tag)).decryptor()
        dec.authenticate_additional_data(aad)
        try:
            return dec.update(body) + dec.finalize()
        except InvalidTag:
            raise CryptoError("authentication failed") from None


@dataclass(frozen=True)
class Suite:
    """A named set of algorithms: a hash, its HMAC and an AEAD."""

    name: str
    hash_name: Literal["sha256", "sm3"]
    cipher: Literal["aes-256-gcm", "sm4-gcm"]
    aead_key_size: int  # bytes: 32 for AES-256, 16 for SM4
    mac_key_size: int = 32

    def hash(self, data: bytes) -> bytes:
        return hashlib.new(self.hash_name, data).digest()

    def mac(self, key: bytes, data: bytes) -> bytes:
        # hmac.digest runs in OpenSSL in one call (also for "sm3").
        return hmac.digest(key, data, self.hash_name)

    def aead(self, key: bytes) -> _Aead:
        """The AEAD bound to ``key``; build once and reuse it for many values."""
        if len(key) != self.aead_key_size:
            raise CryptoError(f"{self.name}: the AEAD key must be {self.aead_key_size} bytes")
        return _AesGcm(key) if self.cipher == "aes-256-gcm" else _Sm4Gcm(key)

    def aead_encrypt(self, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """``ciphertext | tag`` (the tag is the last 16 bytes)."""
        _check_nonce(nonce)
        return self.aead(key).encrypt(nonce, plaintext, aad)

    def aead_decrypt(self, key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """The plaintext, or CryptoError if the key, nonce, data or associated data do not match."""
        _check_nonce(nonce)
        return self.aead(key).decrypt(nonce, ciphertext, aad)


def _check_nonce(nonce: bytes) -> None:
    if len(nonce) != NONCE_SIZE:
        raise CryptoError(f"the nonce must be {NONCE_SIZE} bytes")


_SUITES = {
    "aes-gcm+hmac-sha256": Suite("aes-gcm+hmac-sha256", "sha256", "aes-256-gcm", 32),
    "sm4-gcm+hmac-sm3": Suite("sm4-gcm+hmac-sm3", "sm3", "sm4-gcm", 16),
}
SUITES = tuple(_SUITES)
DEFAULT_SUITE = "aes-gcm+hmac-sha256"


def get_suite(name: str) -> Suite:
    """The suite called ``name``; ConfigError naming ``gateway.suite`` for anything else."""
    try:
        return _SUITES[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"gateway.suite: unknown suite {name!r}; choose one of: {', '.join(SUITES)}"
        ) from None


# --------------------------------------------------------------------------------------------
# Keys and the keyring

PURPOSES = ("blind_index", "seal", "audit_signing", "department", "open")
# Purposes with exactly one active key; "department" and "open" hold one key per department.
SINGLE_ACTIVE = ("blind_index", "seal", "audit_signing")
_ID_PREFIX = {
    "blind_index": "bi",
    "seal": "seal",
    "audit_signing": "sig",
    "department": "dept",
    "open": "open",
}
# No ":" (it separates the key id from the value in tokens) and nothing a shell would mangle.
_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
KEYRING_VERSION = 1


@dataclass(eq=False)
class Key:
    """One key of the keyring. ``material`` never appears in repr/str."""

    id: str
    purpose: str
    created: dt.datetime  # aware, UTC
    active: bool
    material: bytes = field(repr=False)

    def public_key(self) -> bytes:
        """Raw public key of an ``audit_signing`` (Ed25519) or ``open`` (X25519) key."""
        if self.purpose == "audit_signing":
            return (
                Ed25519PrivateKey.from_private_bytes(self.material).public_key().public_bytes_raw()
            )
        if self.purpose == "open":
            return (
                X25519PrivateKey.from_private_bytes(self.material).public_key().public_bytes_raw()
            )
        raise KeyringError(f"key {self.id} is a {self.purpose} key: it has no public key")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _material_sizes(purpose: str, suite: str | None) -> tuple[int, ...]:
    if purpose == "seal":
        return (_SUITES[suite].aead_key_size,) if suite else (16, 32)
    return (32,)


def _generate_material(purpose: str, suite: str | None) -> bytes:
    if purpose == "audit_signing":
        return Ed25519PrivateKey.generate().private_bytes_raw()
    if purpose == "open":
        return X25519PrivateKey.generate().private_bytes_raw()
    return secrets.token_bytes(_material_sizes(purpose, suite)[-1])


def _check_material(key_id: str, purpose: str, material: bytes, suite: str | None) -> None:
    sizes = _material_sizes(purpose, suite)
    if len(material) not in sizes:
        need = " or ".join(str(s) for s in sizes)
        raise KeyringError(
            f"key {key_id}: a {purpose} key must be {need} bytes"
            + (f" under suite {suite}" if purpose == "seal" and suite else "")
            + f", this one has {len(material)}"
        )


class Keyring:
    """Keys with ids and purposes, loaded from a 0600 file or ``env:VAR``; saved atomically."""

    def __init__(
        self,
        keys: Iterable[Key] = (),
        *,
        suite: str | None = DEFAULT_SUITE,
        source: Path | str | None = None,
    ):
        if suite is not None and suite not in _SUITES:
            raise KeyringError(f"unknown suite {suite!r} in keyring; known: {', '.join(SUITES)}")
        self.suite = suite
        self.source = source  # the file path or "env:VAR" it came from; None when in memory
        self._keys: dict[str, Key] = {}
        # Bumped on every change so a Protector's cached hot-path state follows rotations.
        self.generation = 0
        self._openers: dict[str, Opener] = {}
        for key in keys:
            self._add(key)

    def __repr__(self) -> str:
        return f"Keyring(source={str(self.source)!r}, suite={self.suite!r}, keys={len(self._keys)})"

    # -- loading and saving ---------------------------------------------------------------

    @classmethod
    def load(cls, source: Path | str) -> Keyring:
        """From a file (refused if group/world accessible) or ``"env:VAR"`` holding the JSON."""
        if isinstance(source, str) and source.startswith("env:"):
            var = source[4:]
            text = os.environ.get(var)
            if not text:
                raise KeyringError(
                    f"{source}: environment variable {var} is not set or empty "
                    "(it must hold the keyring JSON)"
                )
            return cls.from_json(text, source)
        path = Path(source)
        try:
            # Check the mode of the file actually opened (no stat-then-open race).
            with open(path, "rb") as handle:
                info = os.fstat(handle.fileno())
                if os.name == "posix" and info.st_mode & 0o077:
                    raise KeyringError(
                        f"{path}: the keyring is accessible by group or others "
                        f"(mode {stat.S_IMODE(info.st_mode):04o}); refusing to use it. "
                        f"Fix: chmod 600 {path}"
                    )
                data = handle.read()
        except FileNotFoundError:
            raise KeyringError(
                f"{path}: no keyring here; create one with `gateway keys new --keyring {path}` "
                "(or `gateway init DIR` for a new site)"
            ) from None
        except OSError as exc:
            raise KeyringError(f"{path}: cannot read the keyring: {exc.strerror}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise KeyringError(f"{path}: cannot read the keyring: not UTF-8 text") from None
        return cls.from_json(text, path)

    @classmethod
    def from_json(cls, text: str, source: Path | str | None = None) -> Keyring:
        where = str(source) if source is not None else "keyring"
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            # Only the position: the message must not quote the document (it holds secrets).
            raise KeyringError(
                f"{where}: not valid JSON (line {exc.lineno}, column {exc.colno})"
            ) from None
        if not isinstance(doc, dict):
            raise KeyringError(f"{where}: must be a JSON object with 'version' and 'keys'")
        if doc.get("version") != KEYRING_VERSION:
            raise KeyringError(
                f"{where}: version: unsupported keyring version {doc.get('version')!r} "
                f"(this gateway reads version {KEYRING_VERSION})"
            )
        unknown = set(doc) - {"version", "suite", "keys"}
        if unknown:
            raise KeyringError(f"{where}: unknown entries: {', '.join(sorted(unknown))}")
        suite = doc.get("suite")
        if suite is not None and suite not in _SUITES:
            raise KeyringError(
                f"{where}: suite: unknown suite {suite!r}; known: {', '.join(SUITES)}"
            )
        raw_keys = doc.get("keys")
        if not isinstance(raw_keys, list):
            raise KeyringError(f"{where}: keys: must be a list")
        ring = cls(suite=suite, source=source)
        for n, raw in enumerate(raw_keys):
            try:
                ring._add(_key_from_json(raw, suite))
            except KeyringError as exc:
                raise KeyringError(f"{where}: keys[{n}]: {exc}") from None
        ring._check_single_active(where)
        return ring

    def to_json(self) -> str:
        doc: dict[str, Any] = {"version": KEYRING_VERSION}
        if self.suite is not None:
            doc["suite"] = self.suite
        doc["keys"] = [
            {
                "id": k.id,
                "purpose": k.purpose,
                "created": _iso(k.created),
                "active": k.active,
                "material": base64.b64encode(k.material).decode("ascii"),
            }
            for k in self._keys.values()
        ]
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def create(cls, path: Path | None = None, *, suite: str = DEFAULT_SUITE) -> Keyring:
        """A new keyring with active blind_index, seal and audit_signing keys.

        Written with mode 0600 when ``path`` is given; an existing file is never overwritten.
        """
        if suite not in _SUITES:
            raise ConfigError(
                f"gateway.suite: unknown suite {suite!r}; choose one of: {', '.join(SUITES)}"
            )
        ring = cls(suite=suite)
        for purpose in SINGLE_ACTIVE:
            ring.new(purpose)
        if path is not None:
            path = Path(path)
            write_private_file(path, ring.to_json().encode("utf-8"), overwrite=False)
            ring.source = path
        return ring

    def save(self, path: Path | str | None = None) -> None:
        """Write atomically (temp file, fsync, rename) with mode 0600 to ``path`` or the source file."""
        target = path if path is not None else self.source
        if target is None:
            raise KeyringError("this keyring has no file yet: give a path to save it to")
        if isinstance(target, str) and target.startswith("env:"):
            raise KeyringError(
                f"the keyring comes from {target} and cannot be written back: change a file copy "
                "(--keyring FILE) and put its content into the variable"
            )
        target = Path(target)
        write_private_file(target, self.to_json().encode("utf-8"), overwrite=True)
        if self.source is None:
            self.source = target

    # -- keys ---------------------------------------------------------------------------------

    def _add(self, key: Key) -> None:
        if key.id in self._keys:
            raise KeyringError(f"duplicate key id {key.id}")
        self._keys[key.id] = key
        self.generation += 1

    def _check_single_active(self, where: str) -> None:
        for purpose in SINGLE_ACTIVE:
            active = [k.id for k in self._keys.values() if k.purpose == purpose and k.active]
            if len(active) > 1:
                raise KeyringError(
                    f"{where}: {len(active)} active {purpose} keys ({', '.join(active)}); "
                    "exactly one may be active"
                )

    def _new_id(self, purpose: str) -> str:
        while True:  # 4 hex digits per purpose and day: collisions are rare, and checked
            candidate = f"{_ID_PREFIX[purpose]}-{_utcnow():%Y%m%d}-{secrets.token_hex(2)}"
            if candidate not in self._keys:
                return candidate

    def new(self, purpose: str, key_id: str | None = None, material: bytes | None = None) -> Key:
        """Add a key. For blind_index/seal/audit_signing only while none is active (else rotate)."""
        if purpose not in PURPOSES:
            raise KeyringError(f"unknown key purpose {purpose!r}; known: {', '.join(PURPOSES)}")
        if purpose in SINGLE_ACTIVE and any(
            k.active for k in self._keys.values() if k.purpose == purpose
        ):
            raise KeyringError(
                f"the keyring already has an active {purpose} key; "
                f"use `gateway keys rotate {purpose}` to replace it"
            )
        return self._insert(purpose, key_id, material)

    def _insert(self, purpose: str, key_id: str | None, material: bytes | None) -> Key:
        if key_id is None:
            key_id = self._new_id(purpose)
        elif not isinstance(key_id, str) or not _KEY_ID.match(key_id):
            raise KeyringError(
                f"bad key id {key_id!r}: use 1-63 letters, digits, '.', '_' or '-' "
                "(starting with a letter or digit)"
            )
        if key_id in self._keys:
            raise KeyringError(f"key id {key_id} is already in the keyring")
        if material is None:
            material = _generate_material(purpose, self.suite)
        else:
            material = bytes(material)
            _check_material(key_id, purpose, material, self.suite)
            _check_loadable(key_id, purpose, material)
        key = Key(key_id, purpose, _utcnow(), True, material)
        self._add(key)
        return key

    def rotate(self, purpose: str) -> Key:
        """A new active key for ``purpose``; the old ones stay, inactive, to open/verify old data."""
        if purpose not in SINGLE_ACTIVE:
            if purpose == "department":
                raise KeyringError(
                    "department secrets are not rotated in place: add one under a new id "
                    "(`gateway keys new --purpose department --id NEW`), hand it over and set "
                    "departments.NAME.key_id to NEW"
                )
            if purpose == "open":
                raise KeyringError(
                    "open keys are not rotated in place: add one under a new id "
                    "(`gateway keys new --purpose open --id NEW`) and send its public key"
                )
            raise KeyringError(f"unknown key purpose {purpose!r}; known: {', '.join(PURPOSES)}")
        new = self._insert(purpose, None, None)
        for key in self._keys.values():
            if key.purpose == purpose and key is not new:
                key.active = False
        self.generation += 1
        return new

    def active(self, purpose: str) -> Key:
        if purpose not in SINGLE_ACTIVE:
            raise KeyringError(f"{purpose} keys are looked up by id, not as the active one")
        for key in self._keys.values():
            if key.purpose == purpose and key.active:
                return key
        raise KeyringError(
            f"{self._where()}: no active {purpose} key; create one with "
            f"`gateway keys rotate {purpose}`"
        )

    def get(self, key_id: str) -> Key:
        try:
            return self._keys[key_id]
        except (KeyError, TypeError):
            raise KeyringError(f"{self._where()}: no key with id {key_id!r}") from None

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __iter__(self) -> Iterator[Key]:
        return iter(list(self._keys.values()))

    def keys(self, purpose: str | None = None) -> list[Key]:
        """Keys in the keyring's order (oldest first), optionally only one purpose's."""
        return [k for k in self._keys.values() if purpose is None or k.purpose == purpose]

    def status(self) -> list[dict[str, Any]]:
        """id, purpose, created (ISO 8601 UTC) and active of every key: never material."""
        return [
            {"id": k.id, "purpose": k.purpose, "created": _iso(k.created), "active": k.active}
            for k in self._keys.values()
        ]

    def department_secret(self, key_id: str) -> bytes:
        """The HMAC request secret of a department (purpose ``department``, active)."""
        key = self._keys.get(key_id)
        if key is None or key.purpose != "department":
            raise KeyringError(f"{self._where()}: no department key with id {key_id!r}")
        if not key.active:
            raise KeyringError(f"department key {key_id} is retired")
        return key.material

    def open_sealed(self, token: str, *, aad: bytes = b"") -> str:
        """Open an ``x25519:`` token with whichever of this keyring's ``open`` keys it was sealed to."""
        keys = sorted(self.keys("open"), key=lambda k: (k.active, k.created), reverse=True)
        if not keys:
            raise KeyringError(
                f"{self._where()}: no open key (create one with `gateway keys new --purpose open --id NAME`)"
            )
        for key in keys:
            opener = self._openers.get(key.id)
            if opener is None:
                opener = self._openers[key.id] = Opener(key.material)
            try:
                return opener.open(token, aad=aad)
            except CryptoError:
                continue
        raise CryptoError("cannot open the sealed value with any open key of this keyring")

    def _where(self) -> str:
        return str(self.source) if self.source is not None else "keyring"


def _key_from_json(raw: Any, suite: str | None) -> Key:
    if not isinstance(raw, dict):
        raise KeyringError("must be an object")
    missing = [f for f in ("id", "purpose", "created", "active", "material") if f not in raw]
    if missing:
        raise KeyringError(f"missing {', '.join(missing)}")
    key_id = raw["id"]
    if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
        raise KeyringError(f"id: bad key id {key_id!r}")
    purpose = raw["purpose"]
    if purpose not in PURPOSES:
        raise KeyringError(f"{key_id}: purpose: unknown {purpose!r}; known: {', '.join(PURPOSES)}")
    try:
        created = dt.datetime.fromisoformat(raw["created"])
    except (TypeError, ValueError):
        raise KeyringError(f"{key_id}: created: not an ISO 8601 date-time") from None
    if created.tzinfo is None:
        raise KeyringError(f"{key_id}: created: needs a time zone (e.g. ...Z for UTC)")
    if not isinstance(raw["active"], bool):
        raise KeyringError(f"{key_id}: active: must be true or false")
    try:
        material = base64.b64decode(raw["material"], validate=True)
    except (TypeError, ValueError, binascii.Error):
        raise KeyringError(f"{key_id}: material: not valid base64") from None
    _check_material(key_id, purpose, material, suite)
    _check_loadable(key_id, purpose, material)
    return Key(key_id, purpose, created.astimezone(dt.UTC), raw["active"], material)


def _check_loadable(key_id: str, purpose: str, material: bytes) -> None:
    try:
        if purpose == "audit_signing":
            Ed25519PrivateKey.from_private_bytes(material)
        elif purpose == "open":
            X25519PrivateKey.from_private_bytes(material)
    except ValueError:
        raise KeyringError(f"key {key_id}: not a valid {purpose} private key") from None


def write_private_file(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write ``data`` with mode 0600: temp file, fsync, then rename (or link, never clobbering).

    Readers see the old file or the new one, never half of it, even after a crash.
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise KeyringError(f"{path}: folder {folder} does not exist")
    if not overwrite and path.exists():
        raise KeyringError(f"{path}: already exists; refusing to overwrite it")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)  # 0600
    except OSError as exc:
        raise KeyringError(f"{path}: cannot write in {folder}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic and fails if the name exists
            except FileExistsError:
                raise KeyringError(f"{path}: already exists; refusing to overwrite it") from None
            except OSError:  # file systems without hard links: exclusive create instead
                _write_exclusive(path, data)
        _fsync_dir(folder)
    except OSError as exc:
        raise KeyringError(f"{path}: cannot write: {exc.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_exclusive(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyringError(f"{path}: already exists; refusing to overwrite it") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# The protector: blind indexes, sealed fields, audit signatures


_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64url(data: bytes) -> str:
    # base64.urlsafe_b64encode without its Python layers (this runs once per sealed value).
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").translate(_TO_URLSAFE).decode()


_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def _unb64url(text: str) -> bytes:
    if not _B64URL.match(text) or len(text) % 4 == 1:
        raise CryptoError("malformed token")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id_of(value: str) -> str:
    """The key id a blind index or sealed token was made with (the part before the first ':')."""
    key_id, sep, rest = value.partition(":")
    if not sep or not key_id or not rest:
        raise CryptoError("not a key-tagged value (expected '<key id>:...')")
    return key_id


_SEAL_LABEL = b"gateway-seal-v1"


def hmac_template(key: bytes, hash_name: str, prefix: bytes = b"") -> Any:
    """An HMAC with ``key`` (and ``prefix``) absorbed, to ``copy()`` once per value. OpenSSL's own
    HMAC object when ``hmac`` is backed by it (its copy() skips hmac.HMAC's Python layer: ~0.2 µs
    per value); both have the same update/digest/hexdigest/copy."""
    template = hmac.new(key, prefix or None, digestmod=hash_name)
    return getattr(template, "_hmac", None) or template


def _seal_aad(key_id: str, dataset: str, field_name: str, record: str) -> bytes:
    # Length-prefixed parts: ("ab", "c") and ("a", "bc") give different associated data.
    parts = (_SEAL_LABEL, key_id.encode(), dataset.encode(), field_name.encode(), record.encode())
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


class Protector:
    """The keyring's keys put to work under one suite. Follows rotations of the keyring."""

    def __init__(self, keyring: Keyring, suite: Suite):
        if keyring.suite is not None and keyring.suite != suite.name:
            raise KeyringError(
                f"{keyring._where()}: the keyring was made for suite {keyring.suite} but "
                f"gateway.suite is {suite.name}; use a keyring made for it "
                f"(`gateway keys new --suite {suite.name}`)"
            )
        self.keyring = keyring
        self.suite = suite
        self._generation = -1  # forces the first _refresh
        # (key id + ":", keyed HMAC template): replaced as one tuple so threads never mix them.
        self._bi: tuple[str, Any] = ("", None)
        self._aeads: dict[str, _Aead] = {}
        self._signers: dict[str, Ed25519PrivateKey] = {}

    def __repr__(self) -> str:
        return f"Protector(suite={self.suite.name!r}, keyring={self.keyring!r})"

    def _refresh(self) -> None:
        generation = self.keyring.generation
        key = self.keyring.active("blind_index")
        # HMAC with the key already absorbed: copy() per value skips the key schedule,
        # about 1.6x faster than hmac.digest for ID-sized inputs.
        self._bi = (key.id + ":", hmac_template(key.material, self.suite.hash_name))
        self._generation = generation

    # -- blind index (hot path: one ID per row) ---------------------------------------------

    def blind_index(self, material: str) -> str:
        """``<key id>:<hex HMAC(active blind_index key, material)>``."""
        if self._generation != self.keyring.generation:
            self._refresh()
        prefix, template = self._bi
        mac = template.copy()
        mac.update(material.encode())
        return prefix + mac.hexdigest()

    def blind_indexes(self, material: str) -> list[str]:
        """The blind index under every blind_index key, the active one first (lookups in rotation)."""
        data = material.encode()
        keys = sorted(self.keyring.keys("blind_index"), key=lambda k: not k.active)
        return [f"{k.id}:{self.suite.mac(k.material, data).hex()}" for k in keys]

    def blind_index_with(self, key_id: str, material: str) -> str:
        """The blind index under a given blind_index key (e.g. a caller's old key id)."""
        key = self.keyring.get(key_id)
        if key.purpose != "blind_index":
            raise KeyringError(f"key {key_id} is a {key.purpose} key, not a blind_index key")
        return f"{key.id}:{self.suite.mac(key.material, material.encode()).hex()}"

    def is_current(self, value: str) -> bool:
        """True if a blind index or sealed token is under the active key of its purpose."""
        key = self.keyring.get(key_id_of(value))
        return key.active

    # -- sealed fields --------------------------------------------------------------------------

    def _aead(self, key: Key) -> _Aead:
        aead = self._aeads.get(key.id)
        if aead is None:
            if len(key.material) != self.suite.aead_key_size:
                raise KeyringError(
                    f"seal key {key.id} is {len(key.material)} bytes but suite {self.suite.name} "
                    f"needs {self.suite.aead_key_size}"
                )
            aead = self._aeads[key.id] = self.suite.aead(key.material)
        return aead

    def seal(self, plaintext: str, *, dataset: str, field: str, record: str) -> str:
        """``<key id>:<base64url(nonce|ciphertext|tag)>`` bound to dataset, field and record."""
        key = self.keyring.active("seal")
        nonce = os.urandom(NONCE_SIZE)
        body = self._aead(key).encrypt(
            nonce, plaintext.encode("utf-8"), _seal_aad(key.id, dataset, field, record)
        )
        return f"{key.id}:{_b64url(nonce + body)}"

    def seal_many(
        self, plaintexts: Sequence[str], *, dataset: str, field: str, records: Sequence[str]
    ) -> list[str]:
        """``seal`` of ``plaintexts[i]`` bound to ``records[i]``, for one dataset and field: the
        same tokens (each with its own random nonce), with one key lookup, one associated-data
        prefix and one read of the random source for the whole batch (bulk sync writes)."""
        if len(plaintexts) != len(records):
            raise ValueError("seal_many: one record per plaintext")
        return self.seal_bound(
            plaintexts, dataset=dataset, field=field, bound=self.record_aads(records)
        )

    @staticmethod
    def record_aads(records: Sequence[str]) -> list[bytes]:
        """The record's part of each seal's associated data (``_seal_aad``'s last, length-prefixed
        part): made once per record when several fields of it are sealed (``seal_bound``)."""
        out = []
        for record in records:
            rec = record.encode()
            out.append(len(rec).to_bytes(4, "big") + rec)
        return out

    def seal_bound(
        self, plaintexts: Sequence[str], *, dataset: str, field: str, bound: Sequence[bytes]
    ) -> list[str]:
        """``seal_many`` with the records given as ``record_aads(records)``."""
        if len(plaintexts) != len(bound):
            raise ValueError("seal_bound: one record per plaintext")
        key = self.keyring.active("seal")
        aead = self._aead(key)
        # AES-GCM: the library's own one-shot encrypt, without our wrapper's call in between.
        encrypt = aead._aead.encrypt if type(aead) is _AesGcm else aead.encrypt
        # _seal_aad's layout: the length-prefixed parts, the record's last.
        prefix = _seal_aad(key.id, dataset, field, "")[:-4]
        head = key.id + ":"
        nonces = os.urandom(NONCE_SIZE * len(plaintexts))
        b2a, urlsafe = binascii.b2a_base64, _TO_URLSAFE
        out = []
        append = out.append
        start = 0
        for text, tail in zip(plaintexts, bound, strict=True):
            nonce = nonces[start : start + NONCE_SIZE]
            start += NONCE_SIZE
            raw = nonce + encrypt(nonce, text.encode(), prefix + tail)
            # _b64url, inline (once per sealed value).
            append(head + b2a(raw, newline=False).rstrip(b"=").translate(urlsafe).decode())
        return out

    def open(self, token: str, *, dataset: str, field: str, record: str) -> str:
        """The plaintext of a sealed token; CryptoError if it was altered or moved."""
        where = f"{dataset}.{field}"
        if not isinstance(token, str):
            raise CryptoError(f"cannot open {where}: not a sealed token")
        try:
            key_id = key_id_of(token)
            raw = _unb64url(token[len(key_id) + 1 :])
        except CryptoError:
            raise CryptoError(f"cannot open {where}: malformed sealed token") from None
        key = self.keyring._keys.get(key_id)
        if key is None or key.purpose != "seal":
            raise CryptoError(f"cannot open {where}: sealed under unknown seal key {key_id!r}")
        if len(raw) < NONCE_SIZE + TAG_SIZE:
            raise CryptoError(f"cannot open {where}: malformed sealed token")
        try:
            data = self._aead(key).decrypt(
                raw[:NONCE_SIZE], raw[NONCE_SIZE:], _seal_aad(key.id, dataset, field, record)
            )
            return data.decode("utf-8")
        except (CryptoError, UnicodeDecodeError):
            raise CryptoError(
                f"cannot open {where}: the sealed value was altered or belongs to another "
                "dataset, field or record"
            ) from None

    # -- audit signatures -------------------------------------------------------------------------

    def _signer(self, key: Key) -> Ed25519PrivateKey:
        signer = self._signers.get(key.id)
        if signer is None:
            signer = self._signers[key.id] = Ed25519PrivateKey.from_private_bytes(key.material)
        return signer

    def sign(self, data: bytes) -> tuple[str, bytes]:
        """Ed25519 signature with the active audit_signing key: ``(key id, 64-byte signature)``."""
        key = self.keyring.active("audit_signing")
        return key.id, self._signer(key).sign(data)

    def verify(self, key_id: str, data: bytes, signature: bytes) -> bool:
        """Check a signature made by any audit_signing key of this keyring (old ones included)."""
        key = self.keyring._keys.get(key_id)
        if key is None or key.purpose != "audit_signing":
            return False
        return verify_signature(self.public_key(key_id), data, signature)

    def public_key(self, key_id: str | None = None) -> bytes:
        """Raw 32-byte Ed25519 public key of the given (default: active) audit_signing key."""
        key = self.keyring.active("audit_signing") if key_id is None else self.keyring.get(key_id)
        if key.purpose != "audit_signing":
            raise KeyringError(f"key {key.id} is a {key.purpose} key, not an audit_signing key")
        return self._signer(key).public_key().public_bytes_raw()


def verify_signature(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """True if ``signature`` is a valid Ed25519 signature of ``data`` under the raw ``public_key``."""
    try:
        pub = Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        raise CryptoError("an Ed25519 public key is 32 raw bytes") from None
    try:
        pub.verify(signature, data)
    except InvalidSignature:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Request signatures (design.md, "Wire format for departments")


def _request_message(
    suite: Suite, method: str, path_query: str, timestamp: str | int, nonce: str, body: bytes
) -> bytes:
    return "\n".join(
        (method.upper(), path_query, str(timestamp), nonce, suite.hash(body).hex())
    ).encode("utf-8")


def request_signature(
    suite: Suite,
    secret: bytes,
    method: str,
    path_query: str,
    timestamp: str | int,
    nonce: str,
    body: bytes,
) -> str:
    """hex(HMAC(secret, METHOD \\n PATH?QUERY \\n TIMESTAMP \\n NONCE \\n hex(HASH(body)))).

    ``path_query`` is the path and query string exactly as sent (no "?" without a query).
    """
    return suite.mac(
        secret, _request_message(suite, method, path_query, timestamp, nonce, body)
    ).hex()


def verify_request_signature(
    suite: Suite,
    secret: bytes,
    method: str,
    path_query: str,
    timestamp: str | int,
    nonce: str,
    body: bytes,
    signature: str,
) -> bool:
    """Constant-time check of an ``X-Gateway-Signature`` value (hex, either case)."""
    expected = request_signature(suite, secret, method, path_query, timestamp, nonce, body)
    given = signature.strip().lower().encode("utf-8", "replace")
    return hmac.compare_digest(expected.encode("ascii"), given)


# --------------------------------------------------------------------------------------------
# Sealing ID numbers to a department's X25519 public key

_SEALED_PREFIX = "x25519:"
_SEALED_INFO = b"gateway-sealed-for-v1"


def _x25519_public(public_key: bytes) -> X25519PublicKey:
    try:
        return X25519PublicKey.from_public_bytes(bytes(public_key))
    except (TypeError, ValueError):
        raise CryptoError("an X25519 public key is 32 raw bytes") from None


def _derive_box_key(shared: bytes, eph_pub: bytes, recipient_pub: bytes) -> bytes:
    # Both public keys in the info bind the key to this exchange (no key-compromise splicing).
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=_SEALED_INFO + eph_pub + recipient_pub
    ).derive(shared)


class Sealer:
    """Seals many values to one department's public key with one ephemeral key pair.

    A batch answer of 10,000 IDs then costs one X25519 exchange instead of 10,000; each value
    still gets its own random nonce. Tokens have the same format as ``seal_for``'s.
    """

    def __init__(self, public_key: bytes):
        recipient = _x25519_public(public_key)
        eph = X25519PrivateKey.generate()
        self._eph_pub = eph.public_key().public_bytes_raw()
        try:
            shared = eph.exchange(recipient)
        except ValueError:  # a low-order point: refuse rather than derive a predictable key
            raise CryptoError("unusable X25519 public key") from None
        self._aead = AESGCM(_derive_box_key(shared, self._eph_pub, recipient.public_bytes_raw()))

    def seal(self, plaintext: str, *, aad: bytes = b"") -> str:
        nonce = os.urandom(NONCE_SIZE)
        body = self._aead.encrypt(nonce, plaintext.encode("utf-8"), aad)
        return _SEALED_PREFIX + _b64url(self._eph_pub + nonce + body)


class Opener:
    """Opens ``x25519:`` tokens with one private key; remembers derived keys per ephemeral key."""

    _CACHE_LIMIT = 256

    def __init__(self, private_key: bytes):
        try:
            self._private = X25519PrivateKey.from_private_bytes(bytes(private_key))
        except (TypeError, ValueError):
            raise CryptoError("an X25519 private key is 32 raw bytes") from None
        self._public = self._private.public_key().public_bytes_raw()
        self._boxes: dict[bytes, AESGCM] = {}

    def open(self, token: str, *, aad: bytes = b"") -> str:
        if not isinstance(token, str) or not token.startswith(_SEALED_PREFIX):
            raise CryptoError("not a sealed value (expected 'x25519:...')")
        raw = _unb64url(token[len(_SEALED_PREFIX) :])
        if len(raw) < 32 + NONCE_SIZE + TAG_SIZE:
            raise CryptoError("malformed sealed value")
        eph_pub, nonce, body = raw[:32], raw[32 : 32 + NONCE_SIZE], raw[32 + NONCE_SIZE :]
        box = self._boxes.get(eph_pub)
        if box is None:
            try:
                shared = self._private.exchange(X25519PublicKey.from_public_bytes(eph_pub))
            except ValueError:
                raise CryptoError("malformed sealed value") from None
            box = AESGCM(_derive_box_key(shared, eph_pub, self._public))
            if len(self._boxes) >= self._CACHE_LIMIT:
                self._boxes.clear()
            self._boxes[eph_pub] = box
        try:
            return box.decrypt(nonce, body, aad).decode("utf-8")
        except (InvalidTag, UnicodeDecodeError):
            raise CryptoError(
                "cannot open the sealed value: wrong private key, altered value or other context"
            ) from None


def seal_for(public_key: bytes, plaintext: str, *, aad: bytes = b"") -> str:
    """``x25519:<base64url(eph_pub|nonce|ct|tag)>``: only the holder of the private key opens it."""
    return Sealer(public_key).seal(plaintext, aad=aad)


def open_sealed(private_key: bytes, token: str, *, aad: bytes = b"") -> str:
    """The plaintext of a ``seal_for`` token; CryptoError for a wrong key or an altered token."""
    return Opener(private_key).open(token, aad=aad)


def x25519_keypair() -> tuple[bytes, bytes]:
    """A new X25519 key pair as raw bytes: ``(private, public)``."""
    private = X25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


# --------------------------------------------------------------------------------------------
# Public key files (departments' sealing keys, the audit verification key)

KeyKind = Literal["x25519", "ed25519"]
_PUBLIC_CLASSES: dict[str, Any] = {"x25519": X25519PublicKey, "ed25519": Ed25519PublicKey}


def encode_public_key(
    public_key: bytes, *, kind: KeyKind, fmt: Literal["pem", "base64"] = "pem"
) -> str:
    """A raw public key as PEM (SubjectPublicKeyInfo, what openssl reads) or one base64 line."""
    cls = _PUBLIC_CLASSES[kind]
    try:
        obj = cls.from_public_bytes(bytes(public_key))
    except ValueError:
        raise CryptoError(f"an {kind} public key is 32 raw bytes") from None
    if fmt == "base64":
        return base64.b64encode(obj.public_bytes_raw()).decode("ascii") + "\n"
    return obj.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def parse_public_key(text: str, *, kind: KeyKind, source: str = "public key") -> bytes:
    """Raw bytes of a public key given as PEM or as base64 of the 32 raw bytes."""
    text = text.strip()
    cls = _PUBLIC_CLASSES[kind]
    if text.startswith("-----BEGIN"):
        try:
            obj = serialization.load_pem_public_key(text.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raise CryptoError(f"{source}: not a readable PEM public key") from None
        if not isinstance(obj, cls):
            raise CryptoError(f"{source}: not an {kind} public key")
        return obj.public_bytes_raw()
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise CryptoError(f"{source}: not an {kind} public key (expected PEM or base64)") from None
    if len(raw) != 32:
        raise CryptoError(f"{source}: an {kind} public key is 32 bytes, this one has {len(raw)}")
    return raw


def read_public_key(path: Path | str, *, kind: KeyKind = "x25519") -> bytes:
    """A public key file (PEM or base64), e.g. a department's ``public_key`` from the config."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CryptoError(f"{path}: no such public key file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise CryptoError(f"{path}: cannot read: {reason}") from None
    return parse_public_key(text, kind=kind, source=str(path))


def write_public_key(
    path: Path | str, public_key: bytes, *, kind: KeyKind, fmt: Literal["pem", "base64"] = "pem"
) -> None:
    """Write a public key file (mode 0644: it is not secret); refuses to overwrite one."""
    text = encode_public_key(public_key, kind=kind, fmt=fmt)
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise CryptoError(f"{path}: already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise CryptoError(f"{path}: cannot write: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text)


# --------------------------------------------------------------------------------------------
# Department secret hand-over files


class SecretFile(NamedTuple):
    """What a department needs to sign requests: its key id, the secret and the suite."""

    key_id: str
    secret: bytes
    suite: str | None

    def __repr__(self) -> str:
        return f"SecretFile(key_id={self.key_id!r}, suite={self.suite!r})"


def write_secret_file(path: Path | str, key_id: str, secret: bytes, suite: str | None) -> None:
    """JSON ``{"key_id", "suite", "secret"}`` with mode 0600; never overwrites a file."""
    doc: dict[str, Any] = {"key_id": key_id}
    if suite is not None:
        doc["suite"] = suite
    doc["secret"] = base64.b64encode(secret).decode("ascii")
    write_private_file(
        Path(path), (json.dumps(doc, indent=2) + "\n").encode("utf-8"), overwrite=False
    )


def read_secret_file(path: Path | str) -> SecretFile:
    """Read a file written by ``write_secret_file`` (refused if group/world accessible)."""
    path = Path(path)
    try:
        info = path.stat()
        if os.name == "posix" and info.st_mode & 0o077:
            raise KeyringError(
                f"{path}: the secret file is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}). Fix: chmod 600 {path}"
            )
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyringError(f"{path}: no such secret file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise KeyringError(f"{path}: not a readable secret file") from None
    try:
        key_id, secret = doc["key_id"], base64.b64decode(doc["secret"], validate=True)
        suite = doc.get("suite")
    except (TypeError, KeyError, ValueError, binascii.Error, AttributeError):
        raise KeyringError(f"{path}: not a secret file (needs key_id and base64 secret)") from None
    if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
        raise KeyringError(f"{path}: key_id: bad key id")
    if suite is not None and suite not in _SUITES:
        raise KeyringError(f"{path}: suite: unknown suite {suite!r}")
    return SecretFile(key_id, secret, suite)


# --------------------------------------------------------------------------------------------
# Masking


def mask_id(value: str) -> str:
    """First 6 + one "*" per hidden character + last 4; values of 10 characters or fewer: all "*"."""
    if len(value) <= 10:
        return "*" * len(value)
    return value[:6] + "*" * (len(value) - 10) + value[-4:]
