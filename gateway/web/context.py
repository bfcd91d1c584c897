"""Access to the app's Site from request code."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import current_app

if TYPE_CHECKING:
    from ..site import Site


def current_site() -> Site:
    return current_app.extensions["gateway.site"]
