"""Signed requests under ``/api/v1``: who is calling, replay protection, rate limits, refusals.

Every API request carries design.md's headers (key id, timestamp, nonce, signature). The check, in
this order: all four headers present (else ``missing-signature``); the key id belongs to a
department of the config and the keyring holds its secret (``unknown-key``); the signature over
``METHOD \\n PATH?QUERY \\n TIMESTAMP \\n NONCE \\n hex(HASH(body))`` matches, with the path and
query exactly as sent on the wire (``bad-signature``); the timestamp is within
``[api] window_seconds`` of now (``expired-timestamp``); and the department's token bucket has a
token (``rate-limited``, 429 with Retry-After). The nonce is recorded in the store only after the
signature verified (``replayed-nonce`` if it was already there, in any process sharing the store).

The nonce and the request's audit entries (``record_answer``) are committed together in
``after_request``, before the response leaves, by the group committer (gateway/web/commit.py): a
data response is never sent without its audit entry, and a replay found at that point is answered
401 with the data withheld. Handlers with side effects (a push, a job run) call ``commit_nonce()``
before acting, so a replayed request never acts twice. Reads go through ``request_connection()``
(a lookup's one SELECT, on PostgreSQL, through gateway/web/reads.py).

Every response of 400 or more under ``/api/v1`` is audited as ``api.refused`` with its reason
(method, path, status, problem type; never the body, never an ID number): the actor is the calling
department, or ``unauthenticated:<key id as sent>`` when the caller could not be established.

Rate limits are per process: a token bucket per department holding ``rate_limit`` tokens and
refilled at ``rate_limit`` per second. Under gunicorn with N workers a department can therefore get
up to N times its limit in total; set ``rate_limit`` to the per-worker share.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from flask import Flask, Request, Response, current_app, g, request
from sqlalchemy.exc import SQLAlchemyError

from .. import audit
from ..crypto import verify_request_signature
from ..errors import GatewayError
from ..policy import Refusal, authorize, department_by_key
from ..schemas import scrub
from ..store.api import purge_nonces, remember_nonce
from .commit import GroupCommitter, Replayed
from .context import current_site
from .problems import Problem, problem_slug

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from sqlalchemy import Connection

    from ..config import AllowRule, DepartmentSettings

log = logging.getLogger("gateway.web.auth")

API_PREFIX = "/api/v1/"
KEY_HEADER = "X-Gateway-Key"
TIMESTAMP_HEADER = "X-Gateway-Timestamp"
NONCE_HEADER = "X-Gateway-Nonce"
SIGNATURE_HEADER = "X-Gateway-Signature"
SIGNATURE_HEADERS = (KEY_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)

_NONCE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_TIMESTAMP = re.compile(r"^\d{1,12}$")
_ACTOR_SAFE = re.compile(r"[^A-Za-z0-9._@-]")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")
PURGE_EVERY_S = 60.0


@dataclass(frozen=True)
class Caller:
    """The department a verified request came from."""

    department: DepartmentSettings
    key_id: str

    @property
    def name(self) -> str:
        return self.department.name

    @property
    def actor(self) -> str:
        return f"dept:{self.department.name}"


# -- rate limits ----------------------------------------------------------------------------------


class TokenBucket:
    """``rate`` tokens per second, at most ``rate`` in store (one second's burst)."""

    __slots__ = ("capacity", "lock", "rate", "tokens", "updated")

    def __init__(self, rate: float):
        self.rate = float(rate)
        self.capacity = float(max(rate, 1))
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> float:
        """0.0 if a token was taken; else the seconds until one is available."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return 0.0
            return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One bucket per department, in this process."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def check(self, department: DepartmentSettings) -> float:
        bucket = self._buckets.get(department.name)
        if bucket is None or bucket.rate != department.rate_limit:
            with self._lock:
                bucket = self._buckets.get(department.name)
                if bucket is None or bucket.rate != department.rate_limit:
                    bucket = self._buckets[department.name] = TokenBucket(department.rate_limit)
        return bucket.take()


# -- helpers for handlers ------------------------------------------------------------------------


def is_api_request() -> bool:
    return request.path.startswith(API_PREFIX)


def current_caller() -> Caller:
    caller = g.get("caller")
    if caller is None:  # the before_request hook guarantees it under /api/v1
        raise Problem("missing-signature")
    return caller


def require_role(*roles: str, permission: str | None = None) -> Caller:
    """The caller, if its role is one of ``roles`` (or it holds ``permission``); else 403."""
    caller = current_caller()
    dept = caller.department
    if dept.role in roles or (permission is not None and permission in dept.permissions):
        return caller
    needs = " or ".join(roles) + (f" (or the {permission!r} permission)" if permission else "")
    raise Problem("forbidden-role", f"role {dept.role!r} may not use this resource (needs {needs})")


def authorize_for(
    caller: Caller,
    dataset: str,
    purpose: str,
    fields: Sequence[str],
    *,
    write: bool = False,
) -> AllowRule:
    """The policy rule allowing this request, or the 403 naming what was refused (the purpose and
    fields are kept for the refusal's audit entry)."""
    g.purpose = purpose
    try:
        return authorize(
            caller.department, dataset=dataset, purpose=purpose, fields=fields, write=write
        )
    except Refusal as refusal:
        g.refused_fields = list(fields)
        raise Problem(refusal.slug, refusal.detail) from None


def request_connection() -> Connection:
    """A store connection for the request's reads (closed when the request ends; it writes
    nothing: the request's entries go through the group committer)."""
    db = g.get("db")
    if db is None:
        engine = current_site().engine
        db = engine.connect()
        if engine.dialect.name == "postgresql":
            # Reads only: no BEGIN/ROLLBACK round trips around them.
            db = db.execution_options(isolation_level="AUTOCOMMIT")
        g.db = db
    return db


def commit_nonce() -> None:
    """Record the request's nonce now (401 replayed-nonce if it was used): call before acting."""
    nonce = g.get("nonce")
    if nonce is None or g.get("nonce_recorded"):
        return
    with current_site().begin() as session:
        fresh = remember_nonce(session, *nonce)
    g.nonce_recorded = True
    if not fresh:
        g.replayed = True
        raise Problem("replayed-nonce", "this nonce was already used within the window")


def record_answer(**entry: Any) -> None:
    """An audit entry (``audit.record``'s keywords) committed before this answer is sent."""
    g.setdefault("answer_events", []).append(audit.AuditEvent.create(**entry))


def commit_answer() -> None:
    """Commit the nonce and the entries recorded so far now, not after the handler."""
    committer: GroupCommitter = current_app.extensions["gateway.committer"]
    events = g.pop("answer_events", [])
    nonce = None if g.get("nonce_recorded") else g.get("nonce")
    try:
        committer.commit(nonce, events, _replay_events(), was_working=_arriving())
    except Replayed:
        g.replayed = True
        raise Problem("replayed-nonce", "this nonce was already used within the window") from None
    finally:
        g.nonce_recorded = True


def path_as_sent(environ: dict) -> str:
    """The request target as the client sent it (what the signature covers): gunicorn and the
    werkzeug server keep it in RAW_URI / REQUEST_URI; PATH_INFO is already percent-decoded."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        if not raw.startswith("/"):  # absolute form "http://host/path?query"
            parts = urlsplit(raw)
            return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return raw
    path = quote(
        environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""), safe="/:@!$&'()*+,;=-._~"
    )
    query = environ.get("QUERY_STRING", "")
    return path + (f"?{query}" if query else "")


def _now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


# -- the checks ---------------------------------------------------------------------------------


def authenticate(limiter: RateLimiter) -> None:
    """Establish ``g.caller`` or raise the Problem that refuses the request."""
    site = current_site()
    headers = request.headers
    g.claimed_key = headers.get(KEY_HEADER, "")
    missing = [h for h in SIGNATURE_HEADERS if not headers.get(h)]
    if missing:
        raise Problem("missing-signature", f"missing header(s): {', '.join(missing)}")
    key_id, timestamp = headers[KEY_HEADER].strip(), headers[TIMESTAMP_HEADER].strip()
    nonce, signature = headers[NONCE_HEADER].strip(), headers[SIGNATURE_HEADER].strip()
    # The body is read (and its size limit enforced: 413) before anything depends on it.
    body = request.get_data(cache=True)
    department = department_by_key(site.settings, key_id)
    if department is None:
        raise Problem("unknown-key", "no department has this key id")
    try:
        secret = site.keyring.department_secret(key_id)
    except GatewayError:
        raise Problem("unknown-key", "this key id has no active secret in the keyring") from None
    if not _TIMESTAMP.match(timestamp):
        raise Problem("expired-timestamp", f"{TIMESTAMP_HEADER} must be Unix time in seconds")
    if not _NONCE.match(nonce):
        raise Problem("bad-signature", f"{NONCE_HEADER} must be 8-64 characters of A-Z a-z 0-9 _ -")
    path_query = path_as_sent(request.environ)
    if not verify_request_signature(
        site.suite, secret, request.method, path_query, timestamp, nonce, body, signature
    ):
        raise Problem(
            "bad-signature",
            f"the signature does not match (signed: method, path and query as sent, timestamp, "
            f"nonce, {site.suite.hash_name} of the body; suite {site.suite.name})",
        )
    window = site.settings.api.window_seconds
    skew = time.time() - int(timestamp)
    if abs(skew) > window:
        raise Problem(
            "expired-timestamp",
            f"timestamp is {abs(skew):.0f} s {'old' if skew > 0 else 'in the future'}; "
            f"the window is {window} s",
        )
    g.caller = Caller(department, key_id)
    expires = dt.datetime.fromtimestamp(int(timestamp) + window, dt.UTC).replace(tzinfo=None)
    g.nonce = (key_id, nonce, expires)  # recorded with the answer, or earlier by commit_nonce()
    wait = limiter.check(department)
    if wait > 0:
        retry = max(1, math.ceil(wait))
        raise Problem(
            "rate-limited",
            f"more than {department.rate_limit} requests per second",
            headers={"Retry-After": str(retry)},
        )


# -- the refusal audit ----------------------------------------------------------------------------


def _safe_actor_name(value: str) -> str:
    """A claimed key id for the audit actor: printable, short, never an ID number."""
    text = _ACTOR_SAFE.sub("_", value.strip())[:64] or "-"
    return "-" if audit.looks_like_id(text) else text


def _safe_text(value: str | None, limit: int) -> str | None:
    """Caller-chosen text for the audit log: printable, short, never an ID number."""
    if not value or not isinstance(value, str):
        return None
    text = _UNPRINTABLE.sub("?", scrub(value))[:limit].strip()
    return None if not text or audit.looks_like_id(text) else text


def _refusal_of(req: Request, ctx: Any, status: int, slug: str) -> audit.AuditEvent:
    """The ``api.refused`` entry of a request (its request and ``g`` objects): who, what, why;
    never the body."""
    from ..schemas import DATASETS

    caller: Caller | None = ctx.get("caller")
    claimed = ctx.get("claimed_key", "")
    actor = caller.actor if caller else f"unauthenticated:{_safe_actor_name(claimed)}"
    detail = {
        "method": req.method,
        "path": _safe_text(req.path, 200) or "-",
        "status": status,
        "problem": slug,
    }
    if caller is None and claimed:
        detail["reason"] = "caller not established"
    dataset = (req.view_args or {}).get("dataset")
    return audit.AuditEvent.create(
        actor=actor,
        action="api.refused",
        outcome="refused",
        dataset=dataset if dataset in DATASETS else None,
        purpose=_safe_text(ctx.get("purpose"), 100),
        fields=[f for f in ctx.get("refused_fields", ()) if isinstance(f, str)][:50],
        detail=detail,
    )


def refusal_event(status: int, slug: str) -> audit.AuditEvent:
    """The ``api.refused`` entry of this request: who, what, why; never the body."""
    return _refusal_of(request._get_current_object(), g._get_current_object(), status, slug)  # type: ignore[attr-defined]


def _arriving() -> bool:
    """Whether this request was counted as working by the committer (once: now it arrives)."""
    return bool(g.pop("committer_counted", False))


def _replay_events() -> Callable[[], list[audit.AuditEvent]]:
    """This request's entry should its nonce turn out to be replayed: built only then, by whichever
    thread writes the batch, while this request waits for it (so its objects are still whole)."""
    req, ctx = request._get_current_object(), g._get_current_object()  # type: ignore[attr-defined]
    return lambda: [_refusal_of(req, ctx, 401, "replayed-nonce")]


def _audit_refusal(response: Response, committer: GroupCommitter) -> None:
    slug = problem_slug(response) or (
        "server-error" if response.status_code >= 500 else "bad-request"
    )
    event = refusal_event(response.status_code, slug)
    nonce = None if g.get("nonce_recorded") else g.get("nonce")
    # A known nonce changes nothing here: refused anyway, and the same entry is written.
    with contextlib.suppress(Replayed):
        committer.commit(nonce, [event], [event], was_working=_arriving())


_last_purge = [0.0]
_purge_lock = threading.Lock()


def _purge(site: Any) -> None:
    try:
        with site.begin() as session:
            purge_nonces(session, _now_utc())
    except SQLAlchemyError as exc:  # the next purge tries again
        log.warning("purging expired nonces failed: %s", str(exc).splitlines()[0])


def _maybe_purge() -> None:
    """At most once a minute per process, in the background: no answer waits for it."""
    now = time.monotonic()
    with _purge_lock:
        if now - _last_purge[0] < PURGE_EVERY_S:
            return
        _last_purge[0] = now
    threading.Thread(
        target=_purge, args=(current_site(),), name="api-nonce-purge", daemon=True
    ).start()


def init_app(app: Flask) -> None:
    limiter = RateLimiter()
    committer = GroupCommitter(app.extensions["gateway.site"])
    app.extensions["gateway.rate_limiter"] = limiter
    app.extensions["gateway.committer"] = committer

    @app.before_request
    def _authenticate() -> None:
        if is_api_request():
            # Counted until it commits: a batch's leader waits a little for such requests.
            committer.working(+1)
            g.committer_counted = True
            authenticate(limiter)

    @app.after_request
    def _finish(response: Response) -> Response:
        if not is_api_request():
            return response
        db = g.pop("db", None)
        if db is not None:
            db.close()
        if response.status_code >= 400:
            try:
                _audit_refusal(response, committer)
            except (SQLAlchemyError, GatewayError):
                # The store is down or refused the entry: the refusal still goes out, logged here.
                log.exception(
                    "could not audit a refused request (%s %s)", request.method, request.path
                )
            return response
        try:
            commit_answer()
        except Problem as problem:  # a replay found at commit: the data is withheld
            return problem.to_response()
        except (SQLAlchemyError, GatewayError):
            # The audit entry did not commit: the data must not leave either.
            log.exception("the request's audit entry failed to commit")
            failed = Problem("unavailable", "the store did not accept the request's audit entry")
            response = failed.to_response()
            try:
                _audit_refusal(response, committer)
            except (SQLAlchemyError, GatewayError):
                log.exception("could not audit the failed request either")
            return response
        _maybe_purge()
        return response

    @app.teardown_request
    def _close(_exc: BaseException | None) -> None:
        db = g.pop("db", None)
        if db is not None:
            db.close()
        if g.pop("committer_counted", False):  # ended without reaching the committer
            committer.working(-1)
