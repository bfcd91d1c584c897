"""The signed HTTP client departments (and the ``http`` connector) use to talk to a gateway.

Every request carries design.md's headers: key id, timestamp, a single-use nonce and the HMAC
signature over method, path and query, timestamp, nonce and the body's hash. Retries are safe: a
GET is retried on any transient failure; a POST only when the server cannot have acted on it
(connection refused, 429, 503), and each attempt is signed afresh with a new nonce.
"""

from __future__ import annotations

import json as jsonlib
import random
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

import requests

from .errors import GatewayError

if TYPE_CHECKING:
    from .crypto import Keyring, Suite

# An opener: (token, associated data) -> plaintext; CryptoError when it does not open.
Opener = Callable[[str, bytes], str]

RETRY_ALWAYS = {429, 503}  # the server refused before doing anything
RETRY_IDEMPOTENT = {502, 504}  # the outcome is unknown: only safe to repeat for reads


class ClientError(GatewayError):
    """The gateway answered with a problem document (or could not be reached)."""

    exit_code = 1

    def __init__(self, status: int, problem: Mapping[str, Any] | None, message: str):
        self.status, self.problem = status, dict(problem or {})
        super().__init__(message)


class GatewayClient:
    def __init__(
        self,
        base_url: str,
        key_id: str,
        secret: bytes,
        suite: Suite,
        *,
        private_key: bytes | None = None,
        keyring: Keyring | None = None,
        timeout: float | tuple[float, float] = (5.0, 60.0),
        retries: int = 3,
        backoff: float = 0.5,
        session: requests.Session | None = None,
        verify: bool | str = True,
    ):
        self.base_url = base_url.rstrip("/")
        self.key_id, self._secret, self.suite = key_id, secret, suite
        self._opener: Opener | None = None
        if private_key is not None:
            from .crypto import Opener as _Opener

            box = _Opener(private_key)
            self._opener = lambda token, aad: box.open(token, aad=aad)
        elif keyring is not None and keyring.keys("open"):
            self._opener = lambda token, aad: keyring.open_sealed(token, aad=aad)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.session = session or requests.Session()
        self.session.verify = verify
        # The path prefix of base_url (a gateway behind a proxy at /gw) is part of what is signed.
        self._prefix = urlsplit(self.base_url).path.rstrip("/")

    @classmethod
    def from_keyring(
        cls, base_url: str, keyring: Keyring, key_id: str, **kwargs: Any
    ) -> GatewayClient:
        """A department's client from its own keyring: the request secret ``key_id`` (purpose
        department) signs; its open key(s) open sealed values."""
        from .crypto import DEFAULT_SUITE, get_suite

        secret = keyring.department_secret(key_id)
        suite = get_suite(kwargs.pop("suite", None) or keyring.suite or DEFAULT_SUITE)
        return cls(base_url, key_id, secret, suite, keyring=keyring, **kwargs)

    def __repr__(self) -> str:  # never the secret
        return f"GatewayClient({self.base_url!r}, key_id={self.key_id!r})"

    # -- signing -------------------------------------------------------------------------------

    def signed_headers(self, method: str, path_query: str, body: bytes) -> dict[str, str]:
        from .crypto import request_signature

        timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
        signature = request_signature(
            self.suite, self._secret, method, path_query, timestamp, nonce, body
        )
        return {
            "X-Gateway-Key": self.key_id,
            "X-Gateway-Timestamp": timestamp,
            "X-Gateway-Nonce": nonce,
            "X-Gateway-Signature": signature,
        }

    # -- requests ------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        raw_body: bytes | None = None,
        content_type: str = "application/json",
    ) -> requests.Response:
        method = method.upper()
        query = urlencode({k: v for k, v in (params or {}).items() if v is not None}, doseq=True)
        # Signed exactly as sent: requests leaves an already-encoded path alone.
        path_query = (
            self._prefix + quote(path, safe="/:@!$&'()*+,;=-._~%") + (f"?{query}" if query else "")
        )
        url = urlsplit(self.base_url)._replace(path="", query="", fragment="").geturl()
        if raw_body is not None:
            body = raw_body
        elif json is not None:
            body = jsonlib.dumps(json, ensure_ascii=False, separators=(",", ":")).encode()
        else:
            body = b""
        idempotent = method in ("GET", "HEAD", "OPTIONS")
        attempt = 0
        while True:
            headers = self.signed_headers(method, path_query, body)
            if body:
                headers["Content-Type"] = content_type
            try:
                response = self.session.request(
                    method,
                    url + path_query,
                    data=body or None,
                    headers=headers,
                    timeout=self.timeout,
                )
            except requests.ConnectionError as exc:
                # Refused before sending is safe to retry for any method; a reset mid-way is not.
                safe = idempotent or "refused" in str(exc).lower()
                if attempt < self.retries and safe:
                    attempt += 1
                    self._sleep(attempt, None)
                    continue
                raise ClientError(
                    0, None, f"{self.base_url}: cannot connect: {_first_line(exc)}"
                ) from None
            except requests.Timeout:
                if attempt < self.retries and idempotent:
                    attempt += 1
                    self._sleep(attempt, None)
                    continue
                raise ClientError(0, None, f"{self.base_url}{path}: timed out") from None
            retry = response.status_code in RETRY_ALWAYS or (
                idempotent and response.status_code in RETRY_IDEMPOTENT
            )
            if retry and attempt < self.retries:
                attempt += 1
                self._sleep(attempt, response.headers.get("Retry-After"))
                continue
            return response

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        # Exponential backoff with full jitter; a server's Retry-After wins when it is longer.
        delay = random.uniform(0, self.backoff * 2 ** (attempt - 1))
        if retry_after and retry_after.isdigit():
            delay = max(delay, float(retry_after))
        time.sleep(delay)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """A request whose JSON answer is returned; a problem answer raises ClientError."""
        response = self.request(method, path, **kwargs)
        try:
            payload = response.json() if response.content else None
        except ValueError:
            payload = None
        if response.status_code >= 400:
            problem = payload if isinstance(payload, dict) else {}
            detail = problem.get("detail") or problem.get("title") or response.reason
            raise ClientError(
                response.status_code, problem, f"{method} {path}: {response.status_code} {detail}"
            )
        return payload

    def paginate(
        self, path: str, params: Mapping[str, Any] | None = None, *, items: str = "items"
    ) -> Iterator[Any]:
        """Follow ``next_cursor`` until the feed is exhausted."""
        params = dict(params or {})
        while True:
            page = self.call("GET", path, params=params)
            yield from page.get(items, [])
            if not page.get("next_cursor"):
                return
            params["cursor"] = page["next_cursor"]

    # -- the department API --------------------------------------------------------------------

    def page(self, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One page of a paginated resource (the caller keeps ``cursor`` / ``next_cursor``)."""
        page = self.call("GET", path, params=params)
        if not isinstance(page, dict):
            raise ClientError(200, None, f"GET {path}: expected a JSON object")
        return page

    def lookup(
        self,
        dataset: str,
        subjects: Sequence[Mapping[str, str]],
        *,
        purpose: str,
        fields: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Look subjects up (``{"id_number": ...}`` or ``{"subject_key": ...}``); sealed fields
        are opened when the client has the department's private key."""
        body = {"purpose": purpose, "fields": list(fields), "subjects": list(subjects)}
        answer = self.call("POST", f"/api/v1/datasets/{dataset}/lookup", json=body)
        return self.open_sealed(answer, dataset=dataset)

    def changes_page(
        self,
        dataset: str,
        *,
        purpose: str,
        cursor: str | None = None,
        limit: int | None = None,
        fields: Sequence[str] = (),
    ) -> dict[str, Any]:
        params = {
            "purpose": purpose,
            "cursor": cursor,
            "limit": limit,
            "fields": ",".join(fields) or None,
        }
        page = self.page(f"/api/v1/datasets/{dataset}/changes", params)
        return self.open_sealed(page, dataset=dataset)

    def changes(
        self,
        dataset: str,
        *,
        purpose: str,
        cursor: str | None = None,
        fields: Sequence[str] = (),
    ) -> Iterator[dict[str, Any]]:
        """Every change after ``cursor`` (following ``next_cursor``), sealed fields opened."""
        params = {"purpose": purpose, "cursor": cursor, "fields": ",".join(fields) or None}
        for item in self.paginate(f"/api/v1/datasets/{dataset}/changes", params):
            yield self.open_sealed(item, dataset=dataset)

    def push(
        self, dataset: str, records: Sequence[Mapping[str, Any]], *, purpose: str
    ) -> dict[str, Any]:
        """Push canonical records; the answer lists counts and the quarantined records."""
        return self.call(
            "POST",
            f"/api/v1/datasets/{dataset}/records",
            json={"purpose": purpose, "records": [_jsonable(r) for r in records]},
        )

    def match_list(
        self, list_name: str, *, purpose: str, school_code: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every row of one of the latest match lists for the caller's area."""
        params = {"purpose": purpose, "school_code": school_code}
        for row in self.paginate(f"/api/v1/match/{list_name}", params):
            yield self.open_sealed(row)

    def open_sealed(self, payload: Any, *, dataset: str | None = None) -> Any:
        """Replace every ``{"sealed": "x25519:..."}`` with its plaintext (needs the department's
        private key; without it the payload is returned unchanged).

        The associated data is ``"<dataset>/<field>"``: the dataset is ``dataset``, or the nearest
        enclosing ``dataset`` / ``record_dataset`` value of the document.
        """
        if self._opener is None:
            return payload
        return open_document(payload, self._opener, dataset=dataset)


def _jsonable(record: Mapping[str, Any]) -> dict[str, Any]:
    import datetime as dt

    return {
        k: (v.isoformat() if isinstance(v, dt.date | dt.datetime) else v) for k, v in record.items()
    }


def is_sealed(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"sealed"} and isinstance(value["sealed"], str)


def open_document(payload: Any, opener: Opener, *, dataset: str | None = None) -> Any:
    """A JSON document with every sealed value opened (see ``GatewayClient.open_sealed``)."""

    def walk(value: Any, context: str | None) -> Any:
        if isinstance(value, list):
            return [walk(v, context) for v in value]
        if not isinstance(value, dict):
            return value
        for name in ("record_dataset", "dataset"):
            if isinstance(value.get(name), str):
                context = value[name]
                break
        out = {}
        for key, item in value.items():
            if is_sealed(item):
                if context is None:
                    from .crypto import CryptoError

                    raise CryptoError(
                        f"sealed {key}: the document does not say which dataset it is from"
                    )
                out[key] = opener(item["sealed"], f"{context}/{key}".encode())
            else:
                out[key] = walk(item, context)
        return out

    return walk(payload, dataset)


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    # requests nests the cause; the innermost reason is the useful part for an operator.
    for marker in ("Connection refused", "Name or service not known", "timed out"):
        if marker in text:
            return marker
    return text.splitlines()[0][:200] if text else exc.__class__.__name__


def split_path(url_or_path: str) -> str:
    """``https://host/api/v1/x?y=1`` or ``/api/v1/x`` -> the path the signature covers."""
    parts = urlsplit(url_or_path)
    return parts.path + (f"?{parts.query}" if parts.query else "")
