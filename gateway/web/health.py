"""``/healthz`` (the process answers) and ``/readyz`` (store reachable, migrations current, keyring loaded)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ..errors import GatewayError
from ..store import migrate
from .context import current_site
from .openapi import operation
from .schemas import HealthSchema, ReadySchema

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@operation(summary="The process answers", tag="meta", response=HealthSchema, signed=False)
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
@operation(
    summary="Store reachable, migrations current, keyring loaded",
    tag="meta",
    response=ReadySchema,
    signed=False,
    other_responses={503: ReadySchema},
)
def readyz() -> tuple[Response, int]:
    site = current_site()
    checks: dict[str, str] = {}
    try:
        current = migrate.current_revision(site.engine)
        checks["store"] = "ok"
        checks["migrations"] = "ok" if current == migrate.head_revision() else "pending"
    except GatewayError as exc:
        checks["store"] = f"unreachable: {exc}"
        checks["migrations"] = "unknown"
    try:
        site.keyring.active("blind_index")
        checks["keyring"] = "ok"
    except GatewayError as exc:
        checks["keyring"] = f"not loaded: {exc}"
    ready = all(v == "ok" for v in checks.values())
    return jsonify(status="ready" if ready else "not ready", checks=checks), 200 if ready else 503
