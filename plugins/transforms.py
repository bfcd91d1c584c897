"""The built-in mapping transforms, registered as any plugin's would be (see gateway/transforms.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.hookspecs import hookimpl
from gateway.transforms import BUILTIN_TRANSFORMS


@hookimpl
def register_transforms() -> dict[str, Callable[..., Any]]:
    return dict(BUILTIN_TRANSFORMS)
