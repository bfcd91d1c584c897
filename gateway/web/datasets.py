"""``/api/v1/datasets/{dataset}``: batch lookup, change feed and push of records.

Lookup subjects are ID numbers (normalised with gateway.ids and looked up under every blind-index
key, so lookups keep working during a key rotation) or subject keys. A department never computes a
subject key itself: that needs the gateway's blind-index key, which never leaves the gateway. The
subject keys a department can send are those this gateway returned to it earlier, under a rule with
``ids = "subject_key"``: a department that asked once by ID number can ask again later without
sending any ID number. After a blind-index key rotation and ``gateway keys reindex`` the old keys
no longer match; the department gets the new ones from its next lookup or from the change feed.

Records outside the department's area (``departments.X.area`` or the rule's ``areas``) are never
returned: to the caller they do not exist.

Every answer that discloses anything is audited in the request's transaction, committed before the
response is sent: who asked, dataset, purpose, fields, and the subject keys of the people asked
about (found or not: asking is itself an exchange about that person).
"""

from __future__ import annotations

import datetime as dt
import hmac
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, jsonify
from marshmallow import ValidationError
from sqlalchemy import String, and_, any_, bindparam, false, or_, select
from sqlalchemy.dialects.postgresql import ARRAY

from .. import ids
from ..crypto import key_id_of
from ..policy import area_allowed
from ..schemas import DATASETS, scrub
from ..store.records import DATASET_MODELS
from . import cursors
from .auth import (
    Caller,
    authorize_for,
    commit_nonce,
    record_answer,
    request_connection,
    require_role,
)
from .body import json_body, load, query
from .context import current_site
from .disclose import IDENTITY_FIELDS, Discloser, requestable_fields
from .openapi import operation
from .problems import Problem
from .push import run_push
from .reads import ReadConnections, lookup_sql
from .schemas import (
    DATASET_PARAM,
    PURPOSE,
    SUBJECT_KEY_PATTERN,
    ChangesQuerySchema,
    ChangesResponseSchema,
    LookupRequestSchema,
    LookupResponseSchema,
    PushRequestSchema,
    PushResponseSchema,
)

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement, Table

    from ..config import AllowRule

bp = Blueprint("datasets", __name__, url_prefix="/api/v1/datasets")

IN_CHUNK = 1000  # subject keys per IN (...)
SUBJECT_KEYS = frozenset({"id_number", "id_type", "subject_key"})
_LOOKUP_KEYS = frozenset({"purpose", "fields", "subjects"})
_SUBJECT_KEY = re.compile(SUBJECT_KEY_PATTERN)


# -- shared steps -----------------------------------------------------------------------------------


def _table(dataset: str) -> Table:
    if dataset not in DATASETS:
        raise Problem(
            "not-found", f"no dataset {scrub(dataset)[:40]!r}; datasets: {', '.join(DATASETS)}"
        )
    return DATASET_MODELS[dataset].__table__


def _check_fields(dataset: str, requested: Sequence[str]) -> list[str]:
    known = set(requestable_fields(dataset))
    identity = [f for f in requested if f in IDENTITY_FIELDS]
    if identity:
        raise Problem(
            "validation-failed",
            f"{', '.join(identity)}: identity is returned as the policy's ids says; "
            "do not list it in fields",
            errors={"fields": [f"{f}: not requestable" for f in identity]},
        )
    unknown = [scrub(f)[:64] for f in requested if f not in known]
    if unknown:
        raise Problem(
            "validation-failed",
            f"dataset {dataset} has no field(s) {', '.join(unknown)}",
            errors={"fields": [f"{f}: unknown field" for f in unknown]},
        )
    return list(dict.fromkeys(requested))


def _authorized(
    caller: Caller, dataset: str, purpose: str, requested: Sequence[str]
) -> tuple[AllowRule, list[str]]:
    """The rule and the fields to return. Dataset and purpose are checked before the field names,
    so a department without access learns nothing about a dataset's fields."""
    authorize_for(caller, dataset, purpose, ())
    fields = _check_fields(dataset, requested)
    rule = authorize_for(caller, dataset, purpose, fields)
    return rule, fields or _default_fields(rule, dataset)


def _default_fields(rule: AllowRule, dataset: str) -> list[str]:
    known = set(requestable_fields(dataset))
    return [f for f in rule.fields if f in known]


def _area_prefixes(caller: Caller, rule: AllowRule) -> list[str]:
    return list(rule.areas or ([caller.department.area] if caller.department.area else []))


def _area_clause(table: Table, caller: Caller, rule: AllowRule) -> ColumnElement[bool] | None:
    prefixes = _area_prefixes(caller, rule)
    if not prefixes:
        return None
    return or_(*(table.c.area_code.like(f"{p}%") for p in prefixes))


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


# -- lookup -----------------------------------------------------------------------------------------


class _Indexer:
    """Blind indexes of one request's subjects under every blind_index key (the active one first),
    with each key's HMAC prepared once instead of once per subject."""

    def __init__(self, site: Any):
        keyring = site.keyring
        keys = sorted(keyring.keys("blind_index"), key=lambda k: not k.active)
        hash_name = site.suite.hash_name
        self._templates = [(k.id + ":", hmac.new(k.material, digestmod=hash_name)) for k in keys]
        self._key_ids = {k.id for k in keys}

    def indexes(self, material: str) -> list[str]:
        data = material.encode()
        out = []
        for prefix, template in self._templates:
            mac = template.copy()
            mac.update(data)
            out.append(prefix + mac.hexdigest())
        return out

    def candidates(self, raw: Any) -> tuple[list[str], str | None]:
        """The subject keys one subject may be stored under, or ([], reason)."""
        if not isinstance(raw, Mapping):
            return [], 'not_an_object: a subject is {"id_number": ...} or {"subject_key": ...}'
        unknown = set(raw) - SUBJECT_KEYS
        if unknown:
            return [], f"unknown_key: {', '.join(sorted(scrub(str(k))[:40] for k in unknown))}"
        number, key = raw.get("id_number"), raw.get("subject_key")
        if (number is None) == (key is None):
            return [], "one_of: give exactly one of id_number and subject_key"
        if number is not None:
            id_type = raw.get("id_type") or "1"
            if not isinstance(number, str) or not isinstance(id_type, str):
                return [], "bad_type: id_number and id_type are text"
            result = ids.check(number, id_type)
            if not result.ok or not result.value:
                reason = scrub(result.message or "invalid ID number")
                return [], f"{result.code or 'invalid_id'}: {reason}"
            return self.indexes(ids.index_material(result.id_type or id_type, result.value)), None
        if not isinstance(key, str) or "id_type" in raw:
            return [], "bad_type: subject_key is text, without id_type"
        if not _SUBJECT_KEY.match(key) or key_id_of(key) not in self._key_ids:
            return [], "unknown_subject_key: not a subject key of this gateway"
        return [key], None


def _rows_by_subject_pg(
    table: Table, keys: Sequence[str], columns: Sequence[str], prefixes: Sequence[str]
) -> dict[str, list[Mapping[str, Any]]]:
    """PostgreSQL: the one SELECT through the driver (gateway/web/reads.py)."""
    reads: ReadConnections = current_app.extensions["gateway.reads"]
    wanted = tuple(c for c in dict.fromkeys(columns) if c in table.c)
    sql = lookup_sql(table, wanted, len(prefixes))
    out: dict[str, list[Mapping[str, Any]]] = {}
    for values in reads.fetch(sql, [list(keys), *(f"{p}%" for p in prefixes)]):
        row = dict(zip(wanted, values, strict=True))
        out.setdefault(row["subject_key"], []).append(row)
    return out


def _rows_by_subject(
    table: Table, keys: Sequence[str], area: ColumnElement[bool] | None
) -> dict[str, list[Mapping[str, Any]]]:
    session = request_connection()
    if session.dialect.name == "postgresql":
        # One statement, one array parameter: no 1,000-placeholder SQL to build and parse.
        match = table.c.subject_key == any_(bindparam("keys", type_=ARRAY(String)))
        chunk = len(keys) or 1
    else:
        match = table.c.subject_key.in_(bindparam("keys", expanding=True))
        chunk = IN_CHUNK
    stmt = select(table).where(match, table.c.removed == false())
    if area is not None:
        stmt = stmt.where(area)
    stmt = stmt.order_by(table.c.id)
    out: dict[str, list[Mapping[str, Any]]] = {}
    for i in range(0, len(keys), chunk):
        for row in session.execute(stmt, {"keys": list(keys[i : i + chunk])}).mappings():
            out.setdefault(row["subject_key"], []).append(row)
    return out


def _check_batch(site: Any, doc: Mapping[str, Any], key: str) -> None:
    """413 before validation for a list over [api] max_batch: no work is spent on such a body."""
    items, max_batch = doc.get(key), site.settings.api.max_batch
    if isinstance(items, list) and len(items) > max_batch:
        raise Problem(
            "batch-too-large",
            f"{len(items)} {key}; at most {max_batch} per request",
            max_batch=max_batch,
        )


def _lookup_request(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The lookup body as ``LookupRequestSchema`` loads it. A plainly valid body (the usual case)
    is checked here with the schema's own validators: building a marshmallow schema and loading
    through it cost more than the lookup's query. Anything else goes through the schema, whose
    422 names every field that failed."""
    purpose, fields, subjects = doc.get("purpose"), doc.get("fields", []), doc.get("subjects")
    if (
        doc.keys() <= _LOOKUP_KEYS
        and isinstance(purpose, str)
        and isinstance(fields, list)
        and isinstance(subjects, list)
        and all(isinstance(f, str) and 1 <= len(f) <= 64 for f in fields)
        and all(s is not None for s in subjects)
    ):
        try:
            for check in PURPOSE:
                check(purpose)
        except ValidationError:
            pass
        else:
            return {"purpose": purpose, "fields_": list(fields), "subjects": list(subjects)}
    return load(LookupRequestSchema(), doc)


@bp.post("/<dataset>/lookup")
@operation(
    summary="Batch lookup by ID number or subject key",
    tag="datasets",
    request=LookupRequestSchema,
    response=LookupResponseSchema,
    params=[DATASET_PARAM],
)
def lookup(dataset: str) -> Response:
    """Which of these people are in the dataset, and what the policy lets the caller see of them.

    Up to [api] max_batch (10,000) subjects per request; one result per subject, in order. A
    subject is an ID number (``id_number``, optional ``id_type``), or a ``subject_key``. A
    department cannot compute a subject key itself (it is keyed with the gateway's blind-index
    key, which never leaves the gateway): it sends back subject keys this gateway returned to it
    earlier under a rule with ``ids = "subject_key"``, and so asks again without sending any ID
    number. After a blind-index key rotation the old keys stop matching: the next lookup by ID
    number, or the change feed, returns the new ones.
    """
    caller = require_role("department")
    table = _table(dataset)
    doc = json_body()
    site = current_site()
    _check_batch(site, doc, "subjects")
    req = _lookup_request(doc)
    rule, fields = _authorized(caller, dataset, req["purpose"], req["fields_"])
    discloser = Discloser(site, dataset, caller.department, rule, fields)

    indexer = _Indexer(site)
    parsed = [indexer.candidates(s) for s in req["subjects"]]
    keys = list(dict.fromkeys(k for cands, _ in parsed for k in cands))
    if "gateway.reads" in current_app.extensions:
        # Only the columns the answer is made of (the Discloser's identity columns and fields).
        columns = ["id", "subject_key", "id_type", "id_masked", "id_number", *fields]
        if rule.ids != "sealed":
            columns.remove("id_number")
        rows = _rows_by_subject_pg(table, keys, columns, _area_prefixes(caller, rule))
    else:
        rows = _rows_by_subject(table, keys, _area_clause(table, caller, rule))

    results: list[dict[str, Any]] = []
    touched: set[str] = set()
    found = records = 0
    for index, (cands, error) in enumerate(parsed):
        if error is not None:
            results.append({"index": index, "found": False, "error": error, "records": []})
            continue
        matched = [row for key in cands for row in rows.get(key, ())]
        if matched:
            found += 1
            records += len(matched)
            touched.update(row["subject_key"] for row in matched)
        else:
            touched.add(cands[0])
        results.append(
            {
                "index": index,
                "found": bool(matched),
                "records": [discloser.record(row) for row in matched],
            }
        )
    record_answer(
        actor=caller.actor,
        action="api.lookup",
        outcome="delivered" if found else "ok",
        dataset=dataset,
        purpose=req["purpose"],
        fields=discloser.disclosed_fields,
        subject_keys=touched,
        detail={"subjects": len(parsed), "found": found, "records": records, "ids": rule.ids},
    )
    return jsonify(
        {
            "dataset": dataset,
            "purpose": req["purpose"],
            "ids": rule.ids,
            "fields": fields,
            "results": results,
        }
    )


# -- change feed ------------------------------------------------------------------------------------


def _position(token: str) -> tuple[dt.datetime, int]:
    doc = cursors.decode(token, "u", "i")
    try:
        moment, row_id = dt.datetime.fromisoformat(doc["u"]), doc["i"]
    except (TypeError, ValueError):
        raise Problem("invalid-cursor", "not a cursor from this gateway") from None
    if not isinstance(row_id, int) or isinstance(row_id, bool) or moment.tzinfo is not None:
        raise Problem("invalid-cursor", "not a cursor from this gateway")
    return moment, row_id


@bp.get("/<dataset>/changes")
@operation(
    summary="What changed since a cursor",
    tag="datasets",
    query=ChangesQuerySchema,
    response=ChangesResponseSchema,
    params=[DATASET_PARAM],
)
def changes(dataset: str) -> Response:
    """Records inserted, updated or removed after the cursor, oldest change first.

    Keep ``cursor`` from each answer and pass it next time; follow ``next_cursor`` while it is
    set. Changes become visible [api] changes_settle_seconds after they were stored, so a sync
    batch still committing is never skipped. Removed records come as ``change: removed`` with
    their identity only.
    """
    caller = require_role("department")
    table = _table(dataset)
    q = query(ChangesQuerySchema())
    requested = [f.strip() for f in (q.get("fields_") or "").split(",") if f.strip()]
    rule, fields = _authorized(caller, dataset, q["purpose"], requested)
    site = current_site()
    discloser = Discloser(site, dataset, caller.department, rule, fields)
    limit = q["limit"]
    t = table
    settle = dt.timedelta(seconds=site.settings.api.changes_settle_seconds)
    stmt = select(t).where(t.c.updated_at <= _utcnow() - settle)
    if q.get("cursor"):
        moment, row_id = _position(q["cursor"])
        stmt = stmt.where(
            or_(t.c.updated_at > moment, and_(t.c.updated_at == moment, t.c.id > row_id))
        )
    area = _area_clause(t, caller, rule)
    if area is not None:
        stmt = stmt.where(area)
    stmt = stmt.order_by(t.c.updated_at, t.c.id).limit(limit + 1)
    rows = list(request_connection().execute(stmt).mappings())
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        {
            "change": "removed" if row["removed"] else "upsert",
            "updated_at": row["updated_at"].isoformat() + "Z",
            "record": discloser.identity(row) if row["removed"] else discloser.record(row),
        }
        for row in rows
    ]
    if rows:
        cursor = cursors.encode(u=rows[-1]["updated_at"].isoformat(), i=int(rows[-1]["id"]))
    else:
        cursor = q.get("cursor")
    record_answer(
        actor=caller.actor,
        action="api.changes",
        outcome="delivered" if items else "ok",
        dataset=dataset,
        purpose=q["purpose"],
        fields=discloser.disclosed_fields,
        subject_keys={row["subject_key"] for row in rows},
        detail={"items": len(items), "ids": rule.ids, "more": more},
    )
    return jsonify(
        {
            "dataset": dataset,
            "purpose": q["purpose"],
            "ids": rule.ids,
            "fields": fields,
            "items": items,
            "cursor": cursor,
            "next_cursor": cursor if more else None,
        }
    )


# -- push -------------------------------------------------------------------------------------------


@bp.post("/<dataset>/records")
@operation(
    summary="Push records (validated and quarantined like a sync run)",
    tag="datasets",
    request=PushRequestSchema,
    response=PushResponseSchema,
    params=[DATASET_PARAM],
)
def push(dataset: str) -> Response:
    """Insert or update records of the dataset, as the source ``api:<department>``.

    Needs a rule with ``write = true`` for the purpose, listing every field sent (id_number and
    id_type are always allowed). Records that fail validation are quarantined with their index,
    field and reason and listed in ``problems``; the others are stored.
    """
    caller = require_role("department")
    _table(dataset)
    doc = json_body()
    site = current_site()
    _check_batch(site, doc, "records")
    req = load(PushRequestSchema(), doc)
    records = req["records"]
    known = set(requestable_fields(dataset))
    # A field sent empty discloses nothing and needs no rule (null and absent store the same).
    names = sorted({k for r in records for k, v in r.items() if k in known and v is not None})
    rule = authorize_for(caller, dataset, req["purpose"], names, write=True)
    outside = [
        i
        for i, r in enumerate(records)
        if not area_allowed(
            caller.department,
            rule,
            r.get("area_code") if isinstance(r.get("area_code"), str) else None,
        )
    ]
    if outside:
        shown = ", ".join(f"records[{i}]" for i in outside[:10])
        raise Problem(
            "forbidden-area",
            f"{len(outside)} record(s) outside the department's area: {shown}"
            + (" ..." if len(outside) > 10 else ""),
        )
    commit_nonce()  # the run writes through its own connections
    result = run_push(site, caller.name, dataset, records)
    s = result.summary
    counts = {
        "read": s.read,
        "inserted": s.inserted,
        "updated": s.updated,
        "unchanged": s.unchanged,
        "quarantined": s.quarantined,
    }
    record_answer(
        actor=caller.actor,
        action="api.push",
        outcome="ok",
        dataset=dataset,
        purpose=req["purpose"],
        fields=names,
        subject_keys=result.subject_keys,
        detail={"run": s.run_id, **counts},
    )
    return jsonify({"dataset": dataset, "run_id": s.run_id, **counts, "problems": result.problems})
