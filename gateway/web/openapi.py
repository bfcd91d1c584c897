"""``/openapi.json``: the API described from the views' own declarations and marshmallow schemas.

Each view declares itself with ``@operation(...)`` (summary, request schema, query schema, path
parameters, response schema); ``build_spec`` walks the app's URL map and turns every declared view
into an OpenAPI 3 operation with apispec's marshmallow plugin. Signed operations get the signature
headers as their security requirement and every problem answer they can give, each described by
the ``Problem`` schema (``application/problem+json``), so a client generator or schemathesis sees
the whole contract.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Flask, Response, current_app, json
from marshmallow import Schema

from .. import __version__
from .problems import CATALOGUE, PROBLEM_BASE, problem_schema

bp = Blueprint("openapi", __name__)

# The answers every signed operation may give, whatever it does.
SIGNED_PROBLEMS = (400, 401, 403, 404, 405, 413, 415, 429, 500, 503)
_CONVERTER = re.compile(r"<(?:[a-z_]+:)?([A-Za-z_][A-Za-z0-9_]*)>")

SIGNATURE_DESCRIPTION = """\
Every request under /api/v1 is signed by the calling department with its request secret (from the
gateway operator, `gateway keys export-secret`):

    X-Gateway-Key: <key id>
    X-Gateway-Timestamp: <unix seconds>
    X-Gateway-Nonce: <8-64 of A-Z a-z 0-9 _ -, never reused>
    X-Gateway-Signature: hex(HMAC(secret, METHOD \\n PATH?QUERY \\n TIMESTAMP \\n NONCE \\n hex(HASH(body))))

HMAC-SHA256 and SHA-256 under the default suite, HMAC-SM3 and SM3 under sm4-gcm+hmac-sm3. PATH?QUERY
is the request target exactly as sent (percent-encoding included; no "?" without a query). A
timestamp more than [api] window_seconds (300) away from the gateway's clock, a nonce used before,
an unknown key or a wrong signature is refused with 401; every refusal is audited.
"""


def operation(
    *,
    summary: str,
    tag: str,
    request: type[Schema] | Schema | None = None,
    query: type[Schema] | None = None,
    params: Iterable[Mapping[str, Any]] = (),
    response: type[Schema] | Schema | None = None,
    status: int = 200,
    problems: Iterable[int] = (),
    signed: bool = True,
    description: str | None = None,
    response_content: str = "application/json",
    other_responses: Mapping[int, type[Schema]] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a view for the OpenAPI document (the view is unchanged)."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        view.__openapi__ = {  # type: ignore[attr-defined]
            "summary": summary,
            "tag": tag,
            "request": request,
            "query": query,
            "params": list(params),
            "response": response,
            "status": status,
            "problems": tuple(problems),
            "signed": signed,
            "description": description or (view.__doc__ or "").strip() or None,
            "response_content": response_content,
            "other_responses": dict(other_responses or {}),
        }
        return view

    return decorate


def _schema_name(schema: type[Schema] | Schema) -> str:
    cls = schema if isinstance(schema, type) else type(schema)
    name = cls.__name__
    return name[: -len("Schema")] if name.endswith("Schema") and name != "Schema" else name


def _resolver(schema: type[Schema] | Schema) -> str:
    return _schema_name(schema)


def _problem_response(status: int) -> dict[str, Any]:
    slugs = [slug for slug, (code, _) in CATALOGUE.items() if code == status]
    description = "Problem: " + (", ".join(slugs) if slugs else "error")
    response: dict[str, Any] = {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }
    if status in (429, 503):
        response["headers"] = {
            "Retry-After": {
                "description": "seconds to wait before retrying",
                "schema": {"type": "string"},
            }
        }
    if status == 405:
        response["headers"] = {
            "Allow": {"description": "the methods this path accepts", "schema": {"type": "string"}}
        }
    return response


def build_spec(app: Flask) -> dict[str, Any]:
    spec = APISpec(
        title="County data-exchange gateway",
        version=__version__,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin(schema_name_resolver=_resolver)],
        info={
            "description": "The department API: batch lookups, change feeds, pushes, match lists, "
            "audit and jobs. Errors are application/problem+json with a stable `type` "
            f"({PROBLEM_BASE}<slug>).\n\n" + SIGNATURE_DESCRIPTION
        },
    )
    spec.components.schema("Problem", problem_schema())
    for header, what in (
        ("X-Gateway-Key", "the department's key id"),
        ("X-Gateway-Timestamp", "Unix time in seconds"),
        ("X-Gateway-Nonce", "single use within the window"),
        ("X-Gateway-Signature", "hex HMAC over the request (see the description)"),
    ):
        spec.components.security_scheme(
            header.replace("X-", "").replace("-", ""),
            {"type": "apiKey", "in": "header", "name": header, "description": what},
        )
    signed_security = [
        {"GatewayKey": [], "GatewayTimestamp": [], "GatewayNonce": [], "GatewaySignature": []}
    ]
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions.get(rule.endpoint)
        meta = getattr(view, "__openapi__", None)
        if meta is None:
            continue
        path = _CONVERTER.sub(r"{\1}", rule.rule)
        operations: dict[str, Any] = {}
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            op: dict[str, Any] = {
                "summary": meta["summary"],
                "tags": [meta["tag"]],
                "operationId": rule.endpoint.replace(".", "_"),
            }
            if meta["description"]:
                op["description"] = meta["description"]
            parameters = list(meta["params"])
            if meta["query"] is not None:
                parameters.append({"in": "query", "schema": meta["query"]})
            if parameters:
                op["parameters"] = parameters
            if meta["request"] is not None:
                op["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": meta["request"]}},
                }
            ok: dict[str, Any] = {"description": "OK"}
            if meta["response"] is not None:
                ok["content"] = {meta["response_content"]: {"schema": meta["response"]}}
            elif meta["response_content"] != "application/json":
                ok["content"] = {meta["response_content"]: {"schema": {"type": "string"}}}
            responses: dict[str, Any] = {str(meta["status"]): ok}
            codes = set(meta["problems"])
            if meta["signed"]:
                codes |= set(SIGNED_PROBLEMS)
                op["security"] = signed_security
            if meta["request"] is not None:
                codes |= {400, 413, 415, 422}
            if meta["query"] is not None:
                codes |= {422}
            for code in sorted(codes - set(meta["other_responses"])):
                responses[str(code)] = _problem_response(code)
            for code, schema in meta["other_responses"].items():
                responses[str(code)] = {
                    "description": "see the schema",
                    "content": {"application/json": {"schema": schema}},
                }
            op["responses"] = responses
            operations[method.lower()] = op
        spec.path(path=path, operations=operations)
    return spec.to_dict()


@bp.get("/openapi.json")
@operation(summary="This document", tag="meta", signed=False)
def openapi_json() -> Response:
    doc = current_app.extensions.get("gateway.openapi")
    if doc is None:
        doc = current_app.extensions["gateway.openapi"] = build_spec(current_app)
    return Response(json.dumps(doc), mimetype="application/json")
