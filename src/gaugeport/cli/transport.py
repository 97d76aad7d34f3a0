"""CLI verbs (placeholder module; verbs are registered on import)."""

from gaugeport.cli._app import app  # noqa: F401
