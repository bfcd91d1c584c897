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

from flask import Flask

if TYPE_CHECKING:
    from ..site import Site


def _check_departments(site: Site) -> None:
    """Fail at start, not at the first request: sealed IDs need a readable public key."""
    from .disclose import public_key_of

    for department in site.settings.departments.values():
        if any(rule.ids == "sealed" for rule in department.allow):
            public_key_of(site, department)


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
    return app
