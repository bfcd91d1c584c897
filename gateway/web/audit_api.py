"""``/api/v1/audit`` and ``/api/v1/audit/subject``: the audit log for auditors, thin over gateway.audit.

Reading the log is itself recorded (``api.audit_search``; ``audit.subject`` for a person's report,
with the person's subject keys, as ``gateway audit subject`` does). A person's report is asked for
by subject key (GET) or by ID number in a POST body: an ID number never goes into a URL, where
access logs would keep it.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from .. import audit
from .auth import record_answer, require_role
from .body import json_body, load, query
from .context import current_site
from .openapi import operation
from .problems import Problem
from .schemas import (
    AuditQuerySchema,
    AuditSearchResponseSchema,
    AuditSubjectQuerySchema,
    AuditSubjectRequestSchema,
    AuditSubjectResponseSchema,
)

bp = Blueprint("audit_api", __name__, url_prefix="/api/v1/audit")
FILTERS = ("actor", "department", "dataset", "action", "outcome", "purpose", "since", "until")


@bp.get("")
@operation(
    summary="Search the audit log (auditors)",
    tag="audit",
    query=AuditQuerySchema,
    response=AuditSearchResponseSchema,
)
def search() -> Response:
    """Entries matching the filters, newest first; page with ``before_seq``."""
    caller = require_role("auditor")
    q = query(AuditQuerySchema())
    site = current_site()
    filters = {k: q[k] for k in FILTERS if q.get(k) is not None}
    limit = q["limit"]
    try:
        entries = audit.search(site, limit=limit + 1, before_seq=q.get("before_seq"), **filters)
    except audit.AuditError as exc:
        raise Problem("validation-failed", str(exc), errors={}) from None
    more = len(entries) > limit
    entries = entries[:limit]
    record_answer(
        actor=caller.actor,
        action="api.audit_search",
        detail={"filters": sorted(filters), "entries": len(entries)},
    )
    return jsonify(
        {"items": entries, "next_before_seq": entries[-1]["seq"] if more and entries else None}
    )


def _report(caller: Any, keys: list[str], how: str) -> Response:
    site = current_site()
    report = audit.subject_report(site, subject_keys=keys)
    record_answer(
        actor=caller.actor,
        action="audit.subject",
        subject_keys=keys,
        detail={"entries": len(report), "by": how},
    )
    return jsonify({"items": report})


@bp.get("/subject")
@operation(
    summary="Every exchange about one person, by subject key (auditors)",
    tag="audit",
    query=AuditSubjectQuerySchema,
    response=AuditSubjectResponseSchema,
)
def subject_by_key() -> Response:
    """Who received what about the person, when and why, oldest first."""
    caller = require_role("auditor")
    q = query(AuditSubjectQuerySchema())
    return _report(caller, list(dict.fromkeys(q["subject_key"])), "subject_key")


@bp.post("/subject")
@operation(
    summary="Every exchange about one person, by ID number (auditors)",
    tag="audit",
    request=AuditSubjectRequestSchema,
    response=AuditSubjectResponseSchema,
)
def subject_by_id() -> Response:
    """The ID number travels in the body and is only turned into its subject keys."""
    caller = require_role("auditor")
    req = load(AuditSubjectRequestSchema(), json_body())
    keys = list(req.get("subject_keys") or [])
    if req.get("id_number"):
        try:
            keys += audit.subject_keys_for_id(current_site(), req["id_number"], req["id_type"])
        except audit.AuditError as exc:
            raise Problem(
                "validation-failed", str(exc), errors={"id_number": ["not a valid ID number"]}
            ) from None
    return _report(
        caller, list(dict.fromkeys(keys)), "id_number" if req.get("id_number") else "subject_key"
    )
