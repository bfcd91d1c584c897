"""``/api/v1/match/{list}``: the latest match lists, for the caller's area only.

A department reads a list under a rule of its ``allow`` with ``dataset = "match"``, a purpose, and
the list names in ``fields`` (e.g. ``fields = ["out_of_school", "home_teaching"]``). Rows come from
the latest successful match run (``gateway match``), restricted to the rule's ``areas`` or else the
department's ``area`` (township codes start with the county's). The person is identified as the
rule's ``ids`` says; ``sealed`` opens the canonical record the row points at and seals its ID
number to the department.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify
from sqlalchemy import select

from ..match import LISTS, MatchError, latest_list
from ..store.records import DATASET_MODELS
from . import cursors
from .auth import authorize_for, record_answer, request_connection, require_role
from .body import query
from .context import current_site
from .disclose import Discloser, jsonable
from .openapi import operation
from .problems import Problem
from .schemas import LIST_PARAM, MatchListResponseSchema, MatchQuerySchema

bp = Blueprint("match_api", __name__, url_prefix="/api/v1/match")


def _page(
    site: Any, list_name: str, prefixes: list[str | None], *, limit: int, **kw: Any
) -> tuple[Any, list[dict[str, Any]], bool]:
    """One page of the list over several area prefixes, merged by row id (the API's order)."""
    run = None
    merged: dict[int, dict[str, Any]] = {}
    more = False
    for prefix in prefixes:
        page = latest_list(site, list_name, prefix, limit=limit, **kw)
        run = page.run
        kw["run_id"] = run.run_id  # every prefix read from the same run
        more = more or page.next_after is not None
        for row in page.rows:
            merged[int(row["row_id"])] = row  # overlapping prefixes give a row once
    rows = [merged[k] for k in sorted(merged)]
    more = more or len(rows) > limit
    return run, rows[:limit], more


@bp.get("/<list_name>")
@operation(
    summary="The latest match list for the caller's area",
    tag="match",
    query=MatchQuerySchema,
    response=MatchListResponseSchema,
    params=[LIST_PARAM],
)
def match_list(list_name: str) -> Response:
    """Rows of one list of the latest match run, for the caller's area, page by page."""
    caller = require_role("department")
    if list_name not in LISTS:
        raise Problem("not-found", f"no list of that name; lists: {', '.join(LISTS)}")
    q = query(MatchQuerySchema())
    rule = authorize_for(caller, "match", q["purpose"], [list_name])
    site = current_site()
    after, run_id = 0, None
    if q.get("cursor"):
        doc = cursors.decode(q["cursor"], "r", "run")
        after, run_id = doc["r"], doc["run"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (after, run_id)):
            raise Problem("invalid-cursor", "not a cursor from this gateway")
    prefixes: list[str | None] = list(rule.areas) or (
        [caller.department.area] if caller.department.area else [None]
    )
    try:
        run, rows, more = _page(
            site,
            list_name,
            prefixes,
            school_code=q.get("school_code"),
            run_id=run_id,
            after_id=after,
            limit=q["limit"],
        )
    except MatchError as exc:
        if run_id is None:
            raise Problem("no-match-run", str(exc)) from None
        raise Problem(
            "invalid-cursor", "that match run is gone; start again without a cursor"
        ) from None
    items = _disclose(site, caller, rule, rows)
    next_cursor = (
        cursors.encode(r=int(rows[-1]["row_id"]), run=run.run_id) if more and rows else None
    )
    record_answer(
        actor=caller.actor,
        action="api.match",
        outcome="delivered" if items else "ok",
        dataset="match",
        purpose=q["purpose"],
        fields=[list_name],
        subject_keys={r["subject_key"] for r in rows},
        detail={"list": list_name, "run": run.run_id, "rows": len(items), "ids": rule.ids},
    )
    return jsonify(
        {
            "list": list_name,
            "title": LISTS[list_name].title,
            "purpose": q["purpose"],
            "ids": rule.ids,
            "run": {
                "run_id": run.run_id,
                "as_of": run.as_of.isoformat(),
                "period": run.period,
                "cutoff": run.cutoff.isoformat(),
            },
            "items": items,
            "next_cursor": next_cursor,
        }
    )


def _disclose(site: Any, caller: Any, rule: Any, rows: list[dict[str, Any]]) -> list[dict]:
    sealed_ids: dict[tuple[str, int], dict[str, str]] = {}
    if rule.ids == "sealed":
        # The list rows keep no ID: open it from the canonical record each row points at.
        by_dataset: dict[str, set[int]] = {}
        for r in rows:
            by_dataset.setdefault(r["record_dataset"], set()).add(int(r["record_id"]))
        for dataset, record_ids in by_dataset.items():
            model = DATASET_MODELS.get(dataset)
            if model is None:
                continue
            t = model.__table__
            discloser = Discloser(site, dataset, caller.department, rule, [])
            stmt = select(t.c.id, t.c.subject_key, t.c.id_number, t.c.id_type).where(
                t.c.id.in_(sorted(record_ids))
            )
            for row in request_connection().execute(stmt).mappings():
                identity = discloser.identity(row)
                if "id_number" in identity:
                    sealed_ids[(dataset, int(row["id"]))] = identity["id_number"]
    items = []
    for r in rows:
        item = {k: jsonable(v) for k, v in r.items() if k not in ("subject_key", "id_masked")}
        if rule.ids == "masked":
            item["id_masked"] = r.get("id_masked")
        elif rule.ids == "subject_key":
            item["subject_key"] = r["subject_key"]
        else:
            sealed = sealed_ids.get((r["record_dataset"], int(r["record_id"])))
            if sealed is not None:
                item["id_number"] = sealed
        items.append(item)
    return items
