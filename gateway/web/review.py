"""Audit review pages (审计日志审阅): server-rendered pages for the county's auditors under ``/review/``.

Who may use them: the ``[users.NAME]`` of the config with role ``auditor`` or ``admin`` (a
werkzeug.security ``password_hash``). Sign-ins, refused and accepted, are audited
(``review.signin``); every page that shows personal data (an entry's detail, a person's report)
is audited as an access (``review.view``) before it is sent, and is not sent if that fails.

Sessions are Flask's signed cookie (``gateway_review``, path ``/review``, HttpOnly, SameSite=Lax,
Secure per ``[gateway] secure_cookies``). The signing key is derived from the site's keyring (HMAC
with the seal key over a fixed label), so restarts keep sessions and every gunicorn worker agrees;
after a seal-key rotation the older keys stay accepted as fallbacks. POST forms carry a
synchronizer token kept in the session (hand-written: ``csrf_token()`` / ``_check_csrf``).

No ID number is ever shown in the clear: the per-person form is a POST (the number never enters a
URL or an access log), the number is turned into blind indexes at once and shown masked, and every
free text taken from the store goes through ``scrub`` (ID-like runs masked) before it is rendered.

``init_app(app)`` registers the blueprint and configures the session; ``bp`` is the blueprint.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException
from werkzeug.security import check_password_hash, generate_password_hash

from .. import audit, ids
from ..config import DATASETS
from ..errors import GatewayError
from .context import current_site

if TYPE_CHECKING:
    from ..config import UserSettings
    from ..site import Site

bp = Blueprint(
    "review",
    __name__,
    url_prefix="/review",
    template_folder="templates",
    static_folder="static/review",
    static_url_path="/static",
)

REVIEW_ROLES = ("auditor", "admin")
SESSION_LABEL = b"gateway/review/session-signing-key/v1"
SESSION_HOURS = 8
# Failed sign-ins of one user within the window (counted from the audit log, so every worker
# agrees) after which even the right password is refused until the window has passed.
SIGNIN_WINDOW = dt.timedelta(minutes=15)
SIGNIN_MAX_FAILURES = 5
PAGE_SIZES = (10, 25, 50, 100, 200)
DEFAULT_PAGE_SIZE = 50
KEYS_SHOWN = 200  # subject keys listed on an entry's page (an entry may touch thousands)
RUNS_SHOWN = 50
MATCH_RUNS_SHOWN = 24
AUDIT_ACCESS_PREFIXES = ("review.", "audit.")  # auditors looking, not data exchanged
ACTIONS_TTL_S = 300.0  # the filter form's list of actions is re-read at most this often

# The same rule as the audit log's refusal of ID numbers: 15+ digits, or 17 digits and X, not
# part of a hex digest.
_ID_LIKE = re.compile(r"(?<![0-9A-Fa-f])(?:\d{17}[Xx]|\d{15,})(?![0-9A-Fa-f])")
# A path of these pages (query included); no whitespace or backslash, so never another host.
_SAFE_NEXT = re.compile(r"^/review/[^\s\\]*$")

OUTCOME_LABELS = {
    "ok": "成功 ok",
    "delivered": "已送达 delivered",
    "refused": "拒绝 refused",
    "failed": "失败 failed",
}
RUN_STATUS_LABELS = {
    "running": "运行中 running",
    "succeeded": "成功 succeeded",
    "ok": "成功 ok",
    "failed": "失败 failed",
    "interrupted": "中断 interrupted",
}
DATASET_LABELS = {
    "students": "学籍 students",
    "poverty": "防返贫监测 poverty",
    "disability": "残疾人 disability",
    "assistance": "社会救助 assistance",
    "residents": "户籍 residents",
    "match": "比对结果 match",
}


# ------------------------------------------------------------------------------------ app set-up


def session_secrets(site: Site) -> list[bytes]:
    """Session signing keys: the active seal key's derivation first, then the older seal keys'.

    HMAC over a fixed label: the same on every restart and in every worker, never a constant in
    the code, and worthless to anyone without the keyring.
    """
    keyring = site.keyring
    active = keyring.active("seal")
    others = [k for k in keyring.keys("seal") if k.id != active.id]
    return [site.suite.mac(k.material, SESSION_LABEL) for k in (active, *others)]


class ReviewSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, Secure as ``[gateway] secure_cookies`` says.

    "auto" marks the cookie Secure when the request came over HTTPS (behind a proxy: when the
    server trusts its X-Forwarded-Proto, e.g. gunicorn's ``forwarded_allow_ips``).
    """

    def get_cookie_secure(self, app: Flask) -> bool:
        mode = app.extensions["gateway.site"].settings.gateway.secure_cookies
        if mode == "auto":
            return bool(request and request.is_secure)
        return mode == "always"


def init_app(app: Flask) -> None:
    """Register the review pages on ``app`` (made by ``gateway.web.create_app``)."""
    if "review" in app.blueprints:
        return
    site: Site = app.extensions["gateway.site"]
    if app.config.get("SECRET_KEY") is None:
        first, *older = session_secrets(site)
        app.config["SECRET_KEY"] = first
        app.config["SECRET_KEY_FALLBACKS"] = older
    app.config["SESSION_COOKIE_NAME"] = "gateway_review"
    app.config["SESSION_COOKIE_PATH"] = "/review"  # the API never receives the cookie
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["PERMANENT_SESSION_LIFETIME"] = dt.timedelta(hours=SESSION_HOURS)
    app.session_interface = ReviewSessionInterface()
    app.register_blueprint(bp)


# ------------------------------------------------------------------------------------ helpers


def scrub(value: object) -> str:
    """Text from the store as it may be shown: any ID-like run masked (defence in depth: the log
    refuses them already)."""
    text = "" if value is None else str(value)
    return _ID_LIKE.sub(lambda m: ids.mask(m.group(0)), text)


def short_key(subject_key: str) -> str:
    """A blind index as shown: key id and the first 12 hex characters."""
    key_id, _, digest = subject_key.partition(":")
    return f"{key_id}:{digest[:12]}…" if digest else subject_key[:16] + "…"


def short_hash(value: str | None, n: int = 16) -> str:
    return "" if not value else f"{value[:n]}…"


def show_ts(value: object) -> str:
    """An audit or run time (UTC) as ``YYYY-MM-DD HH:MM:SS``."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    text = str(value)
    return text[:19].replace("T", " ") if len(text) >= 19 else text


def show_json(value: Any) -> str:
    if isinstance(value, str):
        return scrub(value)
    return scrub(json.dumps(value, ensure_ascii=False, sort_keys=True))


def show_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    return (
        f"{minutes} min {sec:02d} s"
        if minutes < 60
        else f"{minutes // 60} h {minutes % 60:02d} min"
    )


def csrf_token() -> str:
    """The session's CSRF token, made on first use; every POST form carries it."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def _check_csrf() -> bool:
    expected = session.get("csrf")
    given = request.form.get("csrf_token", "")
    return bool(expected) and hmac.compare_digest(str(expected), given)


def _actor(name: str) -> str:
    return f"user:{name}"


def _password_tag(user: UserSettings, key: str | bytes | None = None) -> str:
    """Ties a session to the password hash it signed in with: changing the hash in the config
    ends that user's sessions."""
    key = current_app.config["SECRET_KEY"] if key is None else key
    key = key.encode() if isinstance(key, str) else key
    return hmac.new(key, user.password_hash.encode(), "sha256").hexdigest()[:24]


def _password_tag_ok(user: UserSettings, tag: object) -> bool:
    """The tag under the current session key, or under an older one (a seal-key rotation keeps
    sessions: the tag is renewed under the current key)."""
    if not isinstance(tag, str):
        return False
    if hmac.compare_digest(tag, _password_tag(user)):
        return True
    for key in current_app.config.get("SECRET_KEY_FALLBACKS") or ():
        if hmac.compare_digest(tag, _password_tag(user, key)):
            session["pw"] = _password_tag(user)
            return True
    return False


@cache
def _dummy_hash() -> str:
    # Checked for unknown user names, so an unknown name costs as long as a wrong password.
    return generate_password_hash(secrets.token_hex(16))


def _audit(action: str, outcome: str = "ok", *, actor: str | None = None, **kwargs: Any) -> None:
    """One entry, committed before the response is sent (no audit, no page)."""
    audit.record(current_site(), actor=actor or g.actor, action=action, outcome=outcome, **kwargs)


def _reviewer() -> UserSettings | None:
    """The signed-in user, if the session still matches the config."""
    name = session.get("user")
    if not isinstance(name, str):
        return None
    user = current_site().settings.users.get(name)
    if user is None or user.role not in REVIEW_ROLES:
        return None
    if not _password_tag_ok(user, session.get("pw")):
        return None
    return user


def _safe_next(value: str | None) -> str:
    """Only a path of these pages: never an open redirect."""
    if value and _SAFE_NEXT.match(value) and not value.startswith("//"):
        return value
    return url_for("review.log")


class BadFilter(ValueError):
    """A filter of the log page that cannot be used; the message is shown beside the form."""


def _parse_when(text: str, *, end: bool) -> dt.datetime:
    """``YYYY-MM-DD`` or ``YYYY-MM-DD HH:MM[:SS]`` (UTC). A bare date as the end of a range
    includes that whole day."""
    text = text.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        try:
            day = dt.datetime.fromisoformat(text)
        except ValueError:
            raise BadFilter(f"{text!r} is not a real date") from None
        return day + dt.timedelta(days=1) if end else day
    try:
        when = dt.datetime.fromisoformat(text.replace(" ", "T").replace("Z", "+00:00"))
    except ValueError:
        raise BadFilter(
            f"{text!r} is not a date (YYYY-MM-DD) or a time (YYYY-MM-DD HH:MM)"
        ) from None
    return when.astimezone(dt.UTC).replace(tzinfo=None) if when.tzinfo else when


_TEXT_FILTERS = ("actor", "department", "purpose", "dataset", "action")


def log_filters(args: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Query arguments -> (filters for ``audit.search``, the form's values, problems)."""
    form: dict[str, str] = {}
    filters: dict[str, Any] = {}
    problems: list[str] = []
    for name in (*_TEXT_FILTERS, "outcome", "since", "until"):
        value = (args.get(name) or "").strip()[:100]
        if value and audit.looks_like_id(value):
            # Never echo an ID number back into the form (or filter on one: the log holds none).
            problems.append(f"{name}: looks like an ID number; use 按人查询 (per-person report)")
            continue
        form[name] = value
    for name in _TEXT_FILTERS:
        if form.get(name):
            filters[name] = form[name]
    if form.get("outcome"):
        if form["outcome"] not in audit.OUTCOMES:
            problems.append(f"outcome: must be one of {', '.join(audit.OUTCOMES)}")
            form["outcome"] = ""
        else:
            filters["outcome"] = form["outcome"]
    for name in ("since", "until"):
        if form.get(name):
            try:
                filters[name] = _parse_when(form[name], end=name == "until")
            except BadFilter as exc:
                problems.append(f"{name}: {exc}")
    if "since" in filters and "until" in filters and filters["since"] >= filters["until"]:
        problems.append("since: must be before until")
    return filters, form, problems


def _int_arg(name: str) -> int | None:
    value = request.args.get(name, "")
    if not value:
        return None
    if not value.isdigit() or len(value) > 18:
        abort(400, description=f"{name} must be an entry number")
    return int(value)


def _suggestions() -> dict[str, list[str]]:
    """Values for the filter form's drop-downs: from the config and the log's indexed columns."""
    site = current_site()
    settings = site.settings
    purposes = sorted(
        {p for d in settings.departments.values() for rule in d.allow for p in rule.purposes}
    )
    return {
        "departments": sorted(settings.departments),
        "purposes": purposes,
        "datasets": [*DATASETS, "match"],
        "actions": _known_actions(site),
        "outcomes": list(audit.OUTCOMES),
    }


def _known_actions(site: Site) -> list[str]:
    """The distinct actions in the log (an index scan: cached for a few minutes per app)."""
    now = time.monotonic()
    cached = current_app.extensions.get("gateway.review.actions")
    if cached is not None and now - cached[0] < ACTIONS_TTL_S:
        return cached[1]
    column = audit.ENTRIES.c.action
    with site.begin() as s:
        actions = list(
            s.execute(select(column).distinct().order_by(column).limit(200)).scalars().all()
        )
    current_app.extensions["gateway.review.actions"] = (now, actions)
    return actions


def _latest_checkpoint(site: Site) -> dict[str, Any] | None:
    c = audit.CHECKPOINTS.c
    with site.begin() as s:
        row = (
            s.execute(select(audit.CHECKPOINTS).order_by(c.seq.desc(), c.id.desc()).limit(1))
            .mappings()
            .first()
        )
    return None if row is None else audit.checkpoint_record(row)


# ------------------------------------------------------------------------------------ request hooks


@bp.before_request
def _guard() -> Response | None:
    g.reviewer = None
    if request.endpoint in ("review.static", "review.signin"):
        if request.method == "POST" and not _check_csrf():
            return _form_expired()
        return None
    user = _reviewer()
    if user is None:
        session.pop("user", None)
        target = request.full_path if request.method == "GET" else None
        return redirect(url_for("review.signin", next=_safe_next(target and target.rstrip("?"))))
    g.reviewer = user
    g.actor = _actor(user.name)
    if request.method == "POST" and not _check_csrf():
        return _form_expired()
    return None


def _form_expired() -> Response:
    return _error_page(
        400,
        "表单已过期 The form has expired",
        "Reload the page and submit again (the form's security token did not match).",
    )


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'",
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.endpoint != "review.static":
        # Pages show personal data: never kept by the browser or a proxy.
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.context_processor
def _template_helpers() -> dict[str, Any]:
    return {
        "csrf_token": csrf_token,
        "scrub": scrub,
        "short_key": short_key,
        "short_hash": short_hash,
        "show_ts": show_ts,
        "show_json": show_json,
        "show_duration": show_duration,
        "outcome_labels": OUTCOME_LABELS,
        "run_status_labels": RUN_STATUS_LABELS,
        "dataset_labels": DATASET_LABELS,
        "reviewer": g.get("reviewer"),
        "site_name": current_site().settings.gateway.site_name,
    }


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    code = exc.code or 500
    titles = {
        400: "请求有误 Bad request",
        404: "未找到 Not found",
        405: "不允许 Method not allowed",
    }
    return _error_page(
        code, titles.get(code, f"错误 Error {code}"), scrub(exc.description) if code < 500 else ""
    )


@bp.errorhandler(SQLAlchemyError)
@bp.errorhandler(GatewayError)
def _unavailable(exc: Exception) -> Response:
    # The store or the keyring failed: the access could not be audited, so nothing is shown.
    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    current_app.logger.error("review page failed: %s", scrub(first_line))
    return _error_page(
        503,
        "暂不可用 Unavailable",
        "The audit store could not be read or written; nothing is shown that could not be audited.",
    )


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    # Logged with its traceback for the operator; the page itself shows nothing of it.
    current_app.logger.exception("review page failed")
    return _error_page(500, "内部错误 Internal error", "")


def _error_page(code: int, title: str, message: str) -> Response:
    return Response(
        render_template("review/error.html", code=code, title=title, message=message),
        status=code,
    )


# ------------------------------------------------------------------------------------ sign-in


def _recent_failures(site: Site, actor: str) -> int:
    since = audit.utcnow() - SIGNIN_WINDOW
    last_ok = audit.search(site, actor=actor, action="review.signin", outcome="ok", limit=1)
    if last_ok:
        since = max(since, audit.parse_ts(last_ok[0]["ts"]))
    return audit.count(site, actor=actor, action="review.signin", outcome="refused", since=since)


def _signin_refused(actor: str, reason: str, message: str, known_name: str) -> tuple[str, int]:
    _audit(
        "review.signin",
        "refused",
        actor=actor,
        detail={"reason": reason, "remote_addr": request.remote_addr},
    )
    return (
        render_template(
            "review/signin.html", error=message, name=known_name, next=request.form.get("next", "")
        ),
        401,
    )


@bp.route("/signin", methods=["GET", "POST"])
def signin() -> Any:
    """审计员登录: sign-in with a user of the config."""
    if request.method == "GET":
        if _reviewer() is not None:
            return redirect(_safe_next(request.args.get("next")))
        return render_template(
            "review/signin.html", error=None, name="", next=request.args.get("next", "")
        )
    site = current_site()
    name = request.form.get("name", "").strip()
    password = request.form.get("password", "")
    user = site.settings.users.get(name)
    if user is None:
        check_password_hash(_dummy_hash(), password)
        # The typed name is not echoed or logged: it might be anything, an ID number included.
        return _signin_refused(
            "user:unknown", "unknown user", "用户名或密码错误 Wrong user name or password.", ""
        )
    actor = _actor(user.name)
    if _recent_failures(site, actor) >= SIGNIN_MAX_FAILURES:
        return _signin_refused(
            actor,
            "too many failures",
            f"登录失败次数过多 Too many failed sign-ins: try again in {int(SIGNIN_WINDOW.total_seconds() // 60)} minutes.",
            user.name,
        )
    try:
        good = check_password_hash(user.password_hash, password)
    except (ValueError, TypeError):  # a malformed hash in the config: refuse, tell the operator
        current_app.logger.error(
            "users.%s.password_hash is not a werkzeug.security hash", user.name
        )
        good = False
    if not good:
        return _signin_refused(
            actor, "wrong password", "用户名或密码错误 Wrong user name or password.", user.name
        )
    if user.role not in REVIEW_ROLES:
        return _signin_refused(
            actor,
            f"role {user.role}",
            "此用户无审计权限 This user may not use the review pages.",
            user.name,
        )
    _audit(
        "review.signin", actor=actor, detail={"role": user.role, "remote_addr": request.remote_addr}
    )
    destination = _safe_next(request.form.get("next"))
    session.clear()  # a fresh session (and CSRF token) for the signed-in user
    session.permanent = True
    session["user"] = user.name
    session["pw"] = _password_tag(user)
    csrf_token()
    return redirect(destination)


@bp.route("/signout", methods=["POST"])
def signout() -> Any:
    _audit("review.signout", detail={"remote_addr": request.remote_addr})
    session.clear()
    return redirect(url_for("review.signin"))


# ------------------------------------------------------------------------------------ pages


@bp.route("/")
def index() -> Any:
    return redirect(url_for("review.log"))


@bp.route("/log")
def log() -> Any:
    """审计日志: the log, newest first, with filters and keyset paging by seq."""
    site = current_site()
    filters, form, problems = log_filters(request.args)
    per = request.args.get("per", type=int) or DEFAULT_PAGE_SIZE
    if per not in PAGE_SIZES:
        per = DEFAULT_PAGE_SIZE
    before, after = _int_arg("before"), _int_arg("after")
    entries: list[dict[str, Any]] = []
    total = 0
    older = newer = None
    if not problems:
        if after is not None:
            entries = audit.search(site, limit=per + 1, after_seq=after, ascending=True, **filters)
            more_newer = len(entries) > per
            entries = list(reversed(entries[:per]))
            newer = entries[0]["seq"] if more_newer and entries else None
            older = entries[-1]["seq"] if entries else None
            if older is not None and not audit.search(site, limit=1, before_seq=older, **filters):
                older = None
        else:
            entries = audit.search(site, limit=per + 1, before_seq=before, **filters)
            more_older = len(entries) > per
            entries = entries[:per]
            older = entries[-1]["seq"] if more_older and entries else None
            if before is not None and entries:
                first = entries[0]["seq"]
                if audit.search(site, limit=1, after_seq=first, ascending=True, **filters):
                    newer = first
        total = audit.count(site, **filters)
    keep = {k: v for k, v in form.items() if v}
    if per != DEFAULT_PAGE_SIZE:
        keep["per"] = str(per)
    return (
        render_template(
            "review/log.html",
            entries=entries,
            total=total,
            form=form,
            problems=problems,
            per=per,
            page_sizes=PAGE_SIZES,
            older_url=url_for("review.log", **keep, before=older) if older else None,
            newer_url=url_for("review.log", **keep, after=newer) if newer else None,
            first_url=url_for("review.log", **keep) if (before or after) else None,
            suggestions=_suggestions(),
            filtered=bool(filters),
        ),
        400 if problems else 200,
    )


@bp.route("/entry/<int:seq>")
def entry(seq: int) -> Any:
    """条目详情: every field of one entry, its subject keys (shortened) and chain material."""
    site = current_site()
    item = audit.get_entry(site, seq)
    if item is None:
        abort(404, description=f"no audit entry {seq} (it may have been archived by retention)")
    keys = item.get("subject_keys") or []
    shown = keys[:KEYS_SHOWN]
    # Seeing whom an exchange touched is an access to those persons' data: audited first.
    _audit("review.view", subject_keys=shown, detail={"page": "entry", "entry": seq})
    detail = item["detail"] if isinstance(item["detail"], dict) else None
    return render_template(
        "review/entry.html",
        e=item,
        detail=detail,
        recipient=(detail or {}).get("recipient") or item["actor"],
        keys=shown,
        more_keys=max(0, len(keys) - len(shown)),
        last_seq=(audit.head(site) or {}).get("seq", seq),
    )


@bp.route("/verify", methods=["GET", "POST"])
def verify() -> Any:
    """链校验: run the verification on demand; show OK or the first break, and the last checkpoint."""
    from ..audit_verify import verify_store

    site = current_site()
    report = error = None
    if request.method == "POST":
        try:
            report = verify_store(site)
        except GatewayError as exc:
            error = scrub(str(exc))
    problems = report.sorted_problems() if report is not None else []
    return render_template(
        "review/verify.html",
        report=report,
        error=error,
        first_problem=problems[0] if problems else None,
        problems=problems[:20],
        head=audit.head(site),
        checkpoint=_latest_checkpoint(site),
        checked_at=audit.format_ts(audit.utcnow()) if report is not None else None,
    )


@bp.route("/person", methods=["GET", "POST"])
def person() -> Any:
    """按人查询: every exchange that touched one person, by ID number (POSTed, never in a URL)."""
    from ..ids import DOCUMENT_TYPES

    site = current_site()
    context: dict[str, Any] = {
        "id_types": DOCUMENT_TYPES,
        "id_type": "1",
        "report": None,
        "error": None,
    }
    if request.method == "GET":
        return render_template("review/person.html", **context)
    id_type = request.form.get("id_type", "1")
    if id_type not in DOCUMENT_TYPES:
        id_type = "1"
    context["id_type"] = id_type
    raw = request.form.get("id_number", "")
    try:
        keys = audit.subject_keys_for_id(site, raw, id_type)
    except audit.AuditError as exc:
        context["error"] = scrub(str(exc))
        return render_template("review/person.html", **context), 400
    checked = ids.check(raw, id_type)
    report = audit.subject_report(site, subject_keys=keys)
    # Asking who saw a person's data is itself an access to it: audited before it is shown.
    _audit("review.view", subject_keys=keys, detail={"page": "person", "entries": len(report)})
    # Auditors' own look-ups (review.*, audit.*) are listed too, but are not exchanges.
    exchanges = [r for r in report if not r["action"].startswith(AUDIT_ACCESS_PREFIXES)]
    context.update(
        report=report,
        masked=checked.masked or "***",
        converted=checked.converted,
        exchanges=len(exchanges),
        audit_views=len(report) - len(exchanges),
        recipients=sorted({r["recipient"] for r in exchanges}),
    )
    return render_template("review/person.html", **context)


@bp.route("/runs")
def runs() -> Any:
    """运行记录: sync runs (status, counts, duration, mapping version) and match runs."""
    from ..match import LISTS, list_runs
    from ..sync import recent_runs

    site = current_site()
    jobs = sorted(site.settings.jobs)
    job = request.args.get("job") or None
    if job is not None and job not in jobs:
        abort(400, description="no such job in the config")
    sync_runs = recent_runs(site, job=job, limit=RUNS_SHOWN)
    match_runs = list_runs(site, limit=MATCH_RUNS_SHOWN)
    return render_template(
        "review/runs.html",
        sync_runs=sync_runs,
        match_runs=match_runs,
        list_titles={name: spec.title for name, spec in LISTS.items()},
        # The lists in the order match.LISTS gives them (the order staff know), unknown ones last.
        list_order=lambda counts: (
            [n for n in LISTS if n in counts] + sorted(n for n in counts if n not in LISTS)
        ),
        jobs=jobs,
        job=job or "",
        versions=_plugin_versions,
    )


def _plugin_versions(raw: str | None) -> str:
    if not raw:
        return ""
    try:
        doc = json.loads(raw)
    except ValueError:
        return scrub(raw)
    if not isinstance(doc, dict):
        return scrub(raw)
    return scrub(", ".join(f"{k} {v}" for k, v in sorted(doc.items())))


__all__ = ["ReviewSessionInterface", "bp", "csrf_token", "init_app", "scrub", "session_secrets"]
