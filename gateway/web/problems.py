"""Errors as RFC 9457 ``application/problem+json`` with a stable ``type`` for every failure.

Departments' scripts branch on ``type``; the title and detail are for people. A detail never
carries an ID number or a secret.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, json
from werkzeug.exceptions import HTTPException

PROBLEM_BASE = "https://gateway.invalid/problems/"

# type slug -> (status, title): the stable catalogue, documented in the OpenAPI description.
CATALOGUE: dict[str, tuple[int, str]] = {
    "bad-request": (400, "Malformed request"),
    "invalid-json": (400, "Body is not valid JSON"),
    "invalid-cursor": (400, "Cursor is not one this gateway issued"),
    "validation-failed": (422, "Request body failed validation"),
    "missing-signature": (401, "Request is not signed"),
    "bad-signature": (401, "Signature does not match"),
    "expired-timestamp": (401, "Timestamp outside the allowed window"),
    "replayed-nonce": (401, "Nonce already used"),
    "unknown-key": (401, "Unknown key id"),
    "forbidden-role": (403, "Role may not use this resource"),
    "forbidden-dataset": (403, "Dataset not allowed by policy"),
    "forbidden-purpose": (403, "Purpose not allowed by policy"),
    "forbidden-field": (403, "Field not allowed by policy"),
    "forbidden-area": (403, "Area not allowed by policy"),
    "not-found": (404, "Not found"),
    "no-match-run": (404, "No match run yet"),
    "method-not-allowed": (405, "Method not allowed"),
    "job-busy": (409, "Job is being run by another process"),
    "unsupported-media-type": (415, "Content type must be application/json"),
    "batch-too-large": (413, "Too many subjects in one request"),
    "body-too-large": (413, "Request body too large"),
    "rate-limited": (429, "Too many requests"),
    "unavailable": (503, "Service not ready"),
    "busy": (503, "Another write to this dataset is in progress; retry"),
    "server-error": (500, "Internal error"),
}

_BY_STATUS = {
    404: "not-found",
    405: "method-not-allowed",
    413: "body-too-large",
    415: "unsupported-media-type",
}


class Problem(Exception):
    """Raise anywhere in a request: becomes the problem document of its catalogue entry."""

    def __init__(
        self,
        slug: str,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ):
        if slug not in CATALOGUE:
            raise ValueError(f"unknown problem type {slug!r}")
        self.slug, self.detail, self.extra = slug, detail, extra
        self.headers = dict(headers or {})
        self.status, self.title = CATALOGUE[slug]
        super().__init__(f"{slug}: {detail or self.title}")

    def to_response(self, headers: dict[str, str] | None = None) -> Response:
        body = {"type": PROBLEM_BASE + self.slug, "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        body.update(self.extra)
        response = Response(
            json.dumps(body), status=self.status, mimetype="application/problem+json"
        )
        for key, value in {**self.headers, **(headers or {})}.items():
            response.headers[key] = value
        # Read by the API's refusal audit (gateway/web/auth.py): the stable type, not the body.
        response.problem_slug = self.slug  # type: ignore[attr-defined]
        return response


def problem_slug(response: Response) -> str | None:
    """The catalogue type of a problem response made by ``Problem.to_response``."""
    return getattr(response, "problem_slug", None)


def problem_schema() -> dict[str, Any]:
    """The OpenAPI schema of a problem document."""
    return {
        "type": "object",
        "required": ["type", "title", "status"],
        "properties": {
            "type": {"type": "string", "enum": [PROBLEM_BASE + s for s in CATALOGUE]},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
        },
        "additionalProperties": True,
    }


def init_app(app: Flask) -> None:
    @app.errorhandler(Problem)
    def _problem(exc: Problem) -> Response:
        return exc.to_response()

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        slug = _BY_STATUS.get(
            exc.code or 500, "bad-request" if (exc.code or 500) < 500 else "server-error"
        )
        problem = Problem(slug, exc.description if slug == "bad-request" else None)
        problem.status = exc.code or problem.status
        headers = (
            {"Allow": ", ".join(exc.valid_methods)} if getattr(exc, "valid_methods", None) else {}
        )
        return problem.to_response(headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # Logged with its traceback for the operator; the caller sees only the stable type.
        app.logger.exception("unhandled error")
        return Problem("server-error").to_response()
