"""The web app: the department API under ``/api/v1``, health, metrics, OpenAPI and review pages.

``create_app()`` is the Flask tutorial's factory; every subsystem attaches itself with
``init_app(app)`` and every resource is its own blueprint. Development: ``gateway serve``.
Production: ``gunicorn -w 4 "gateway.web:create_app()"`` with GATEWAY_CONFIG set (each worker
opens its own store connections; nonces live in the store, so replays are refused across workers).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Flask, Request, Response
from flask.sessions import NullSession, SessionInterface, SessionMixin

if TYPE_CHECKING:
    from ..site import Site


def _check_departments(site: Site) -> None:
    """Fail at start, not at the first request: sealed IDs need a readable public key."""
    from .disclose import public_key_of

    for department in site.settings.departments.values():
        if any(rule.ids == "sealed" for rule in department.allow):
            public_key_of(site, department)


class _NoSessionForApi(SessionInterface):
    """The review pages' session interface, skipped under ``/api/v1``: signed API requests never
    carry the review cookie (its path is /review), and opening a session cost every request a
    cookie parse and a signing serializer."""

    def __init__(self, inner: SessionInterface):
        self.inner = inner

    def open_session(self, app: Flask, request: Request) -> SessionMixin | None:
        if request.path.startswith("/api/v1/"):
            return self.inner.make_null_session(app)
        return self.inner.open_session(app, request)

    def make_null_session(self, app: Flask) -> NullSession:
        return self.inner.make_null_session(app)

    def is_null_session(self, obj: object) -> bool:
        return self.inner.is_null_session(obj)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        self.inner.save_session(app, session, response)


def create_app(site: Site | None = None, config_path: str | Path | None = None) -> Flask:
    from ..site import Site
    from . import (
        audit_api,
        auth,
        datasets,
        health,
        jobs_api,
        match_api,
        metrics,
        openapi,
        problems,
        review,
    )

    if site is None:
        site = Site.from_config(config_path or os.environ.get("GATEWAY_CONFIG", "gateway.toml"))
    _check_departments(site)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = site.settings.api.max_body_bytes
    app.json.ensure_ascii = False  # Chinese labels stay readable
    app.json.sort_keys = False
    app.extensions["gateway.site"] = site
    if site.engine.dialect.name == "postgresql":
        from .reads import ReadConnections

        app.extensions["gateway.reads"] = ReadConnections(site.engine)
    problems.init_app(app)
    metrics.init_app(app)  # first: its timer also covers the signature check
    auth.init_app(app)
    for blueprint in (
        health.bp,
        openapi.bp,
        datasets.bp,
        match_api.bp,
        audit_api.bp,
        jobs_api.bp,
    ):
        app.register_blueprint(blueprint)
    review.init_app(app)  # the auditors' review pages under /review/ (session, CSRF)
    app.session_interface = _NoSessionForApi(app.session_interface)
    return app
