"""Reading a request: JSON bodies (415, 400 invalid-json, 422 validation-failed) and query strings.

Error messages never echo a value the caller sent (it may be an ID number): marshmallow's messages
name the field and the rule, and anything shaped like an ID number in a key is masked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flask import request
from marshmallow import Schema, ValidationError

from ..schemas import scrub
from .problems import Problem

JSON_TYPES = ("application/json",)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _scrubbed(messages: Any) -> Any:
    if isinstance(messages, Mapping):
        return {scrub(str(k)): _scrubbed(v) for k, v in messages.items()}
    if isinstance(messages, list):
        return [_scrubbed(m) for m in messages]
    return scrub(str(messages))


def json_body() -> dict[str, Any]:
    """The request's JSON object, or the problem refusing it."""
    mimetype = request.mimetype
    if mimetype not in JSON_TYPES and not mimetype.endswith("+json"):
        raise Problem(
            "unsupported-media-type",
            f"Content-Type must be application/json, not {mimetype or 'missing'}",
        )
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise Problem("unsupported-media-type", "JSON must be sent as UTF-8")
    data = request.get_data(cache=True)
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise Problem("invalid-json", "the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise Problem("invalid-json", f"line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:
        raise Problem("invalid-json", str(exc)[:200]) from None
    if not isinstance(doc, dict):
        raise Problem("validation-failed", "the body must be a JSON object", errors={})
    return doc


def load(schema: Schema, data: Mapping[str, Any]) -> dict[str, Any]:
    """``schema.load(data)`` or a 422 naming every field that failed."""
    try:
        return schema.load(data)
    except ValidationError as exc:
        errors = _scrubbed(exc.messages)
        fields = ", ".join(sorted(errors)) if isinstance(errors, dict) else ""
        raise Problem(
            "validation-failed", f"invalid: {fields}" if fields else None, errors=errors
        ) from None


def query(schema: Schema) -> dict[str, Any]:
    """The query string loaded by ``schema`` (list fields take repeated parameters)."""
    data: dict[str, Any] = {}
    list_fields = {
        (f.data_key or name) for name, f in schema.fields.items() if f.__class__.__name__ == "List"
    }
    for key in request.args:
        values = request.args.getlist(key)
        data[key] = values if key in list_fields else values[-1]
    return load(schema, data)
