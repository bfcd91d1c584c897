"""The web app: the department API under ``/api/v1``, health, metrics, OpenAPI and review pages.

``create_app()`` is the Flask tutorial's factory; every subsystem attaches itself with
``init_app(app)``. Production: ``gunicorn "gateway.web:create_app()"`` with GATEWAY_CONFIG set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Flask

if TYPE_CHECKING:
    from ..site import Site


def create_app(site: Site | None = None, config_path: str | Path | None = None) -> Flask:
    from ..site import Site
    from . import health, metrics, problems

    if site is None:
        site = Site.from_config(config_path or os.environ.get("GATEWAY_CONFIG", "gateway.toml"))
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = site.settings.api.max_body_bytes
    app.json.ensure_ascii = False  # Chinese labels stay readable
    app.extensions["gateway.site"] = site
    problems.init_app(app)
    metrics.init_app(app)
    app.register_blueprint(health.bp)
    return app
