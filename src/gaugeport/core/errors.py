"""Errors that say what is wrong and what to do. The CLI prints ``message`` and ``hint``.

Every error has a hint: one given where it is raised, or else its class's ``default_hint``.
"""

from __future__ import annotations


class GaugeportError(Exception):
    """Base class: every error gaugeport raises on bad input."""

    default_hint = "run the command with --help to see what it expects"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint or self.default_hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class GaugeError(GaugeportError, ValueError):
    """A gauge is malformed or does not fit (width mismatch, NaN, not a permutation)."""

    default_hint = ("a gauge is a signed permutation of the model's hidden size, written by `gaugeport align`, "
                    "`gaugeport apply --save-gauge` or save_gauge")


class ArchitectureError(GaugeportError, KeyError):
    """Unsupported architecture, or a parameter no rule of its table claims."""

    default_hint = "see the supported architectures in the README (one JSON table each in core/architectures/)"
    __str__ = GaugeportError.__str__


class GaugeGroupError(GaugeportError, ValueError):
    """A gauge outside the model's symmetry group (per-coordinate signs on a LayerNorm model)."""

    default_hint = "LayerNorm models take permutations plus one global sign: use --perm-only"


class CheckpointError(GaugeportError, OSError):
    """A checkpoint or file is missing, truncated or corrupt, or an output would clobber something."""

    default_hint = "check the path, and that the file is complete (not truncated) and of the expected kind"
    __str__ = GaugeportError.__str__


class ArtifactError(GaugeportError, ValueError):
    """An artifact of the wrong kind or shape was given to transport."""

    default_hint = "check the artifact's format in the README (or name its kind with --kind)"


class DataError(GaugeportError, ValueError):
    """Activation data or moments are unusable (empty, NaN, mismatched)."""

    default_hint = "check the data source (--data, --moments): token ids, text or moments of these checkpoints"


class MissingExtraError(GaugeportError, ImportError):
    """An optional package is not installed: the message names it, the hint the extra that installs it."""

    def __init__(self, package: str, extra: str, what: str) -> None:
        super().__init__(f"{what} needs {package}, which is not installed (an optional part of gaugeport)",
                         hint=f"pip install 'gaugeport[{extra}]'")
        self.package = package
        self.extra = extra

    __str__ = GaugeportError.__str__


def require(module: str, extra: str, what: str, package: str | None = None) -> object:
    """Import an optional module, or raise :class:`MissingExtraError` naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(package or module, extra, what) from exc
