"""Errors that say what is wrong and what to do. The CLI prints ``message`` and ``hint``."""

from __future__ import annotations


class GaugeportError(Exception):
    """Base class: every error gaugeport raises on bad input."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class GaugeError(GaugeportError, ValueError):
    """A gauge is malformed or does not fit (width mismatch, NaN, not a permutation)."""


class ArchitectureError(GaugeportError, KeyError):
    """Unsupported architecture, or a parameter no rule of its table claims."""

    __str__ = GaugeportError.__str__


class GaugeGroupError(GaugeportError, ValueError):
    """A gauge outside the model's symmetry group (per-coordinate signs on a LayerNorm model)."""


class CheckpointError(GaugeportError, OSError):
    """A checkpoint or file is missing, truncated or corrupt, or an output would clobber something."""

    __str__ = GaugeportError.__str__


class ArtifactError(GaugeportError, ValueError):
    """An artifact of the wrong kind or shape was given to transport."""


class DataError(GaugeportError, ValueError):
    """Activation data or moments are unusable (empty, NaN, mismatched)."""
