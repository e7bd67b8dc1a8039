"""The HTTP service and its web page (``emovox serve``; needs ``pip install 'emovox[serve]'``).

>>> from emovox.server import Settings, create_app
>>> app = create_app(Settings(model="runs/r1", api_key="s3cret"))

See ``docs/server.md`` for the endpoints, settings and limits.
"""

from __future__ import annotations

from emovox.server.settings import Settings, SettingsError

__all__ = ["Settings", "SettingsError", "create_app"]


def __getattr__(name: str):
    """``create_app`` imports FastAPI: loaded on first use, so the settings (and ``emovox serve --help``) need no extras."""
    if name == "create_app":
        from emovox.server.app import create_app

        return create_app
    raise AttributeError(f"module 'emovox.server' has no attribute {name!r}")
