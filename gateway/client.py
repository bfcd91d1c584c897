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
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import requests

from .errors import GatewayError

if TYPE_CHECKING:
    from .crypto import Suite

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
        timeout: float | tuple[float, float] = (5.0, 60.0),
        retries: int = 3,
        backoff: float = 0.5,
        session: requests.Session | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.key_id, self._secret, self.suite = key_id, secret, suite
        self._private_key = private_key
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.session = session or requests.Session()

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
        path_query = path + (f"?{query}" if query else "")
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
                    self.base_url + path_query,
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

    def lookup(
        self,
        dataset: str,
        subjects: Sequence[Mapping[str, str]],
        *,
        purpose: str,
        fields: Sequence[str] = (),
    ) -> dict[str, Any]:
        body = {"purpose": purpose, "fields": list(fields), "subjects": list(subjects)}
        return self.open_sealed(self.call("POST", f"/api/v1/datasets/{dataset}/lookup", json=body))

    def changes(
        self, dataset: str, *, purpose: str, cursor: str | None = None
    ) -> Iterator[dict[str, Any]]:
        params = {"purpose": purpose, "cursor": cursor}
        for item in self.paginate(f"/api/v1/datasets/{dataset}/changes", params):
            yield self.open_sealed(item)

    def push(
        self, dataset: str, records: Sequence[Mapping[str, Any]], *, purpose: str
    ) -> dict[str, Any]:
        return self.call(
            "POST",
            f"/api/v1/datasets/{dataset}/records",
            json={"purpose": purpose, "records": list(records)},
        )

    def open_sealed(self, payload: Any) -> Any:
        """Replace every ``{"sealed": "x25519:..."}`` value with its plaintext (needs the private key)."""
        if self._private_key is None:
            return payload
        from .crypto import open_sealed

        def walk(value: Any) -> Any:
            if isinstance(value, dict):
                if set(value) == {"sealed"} and isinstance(value["sealed"], str):
                    return open_sealed(self._private_key, value["sealed"])
                return {k: walk(v) for k, v in value.items()}
            if isinstance(value, list):
                return [walk(v) for v in value]
            return value

        return walk(payload)


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
