"""The ``gaugeport`` command line. Each verb group lives in its own module and registers on ``app``.

``main`` is the one top-level handler: bad input (a :class:`GaugeportError`, or an OS error the
user can fix such as a full disk) prints ``error:`` and ``hint:`` and exits 2; anything unexpected
prints ``error: internal error ... (please report)`` and exits 1, never a traceback (set
``GAUGEPORT_DEBUG=1`` to see one); Ctrl-C exits 130 and SIGTERM 143, after every temp output has
been removed. The verbs are imported inside the handler, so an interrupt during start-up is quiet too.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gaugeport.core.errors import GaugeportError

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

_OS_BAD_INPUT = {errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENOENT,
                 errno.EEXIST, errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP}


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that every ``finally`` (temp clean-up) runs."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def __getattr__(name: str) -> Any:
    if name == "app":  # the Typer app, with every verb registered
        return _load_app()
    raise AttributeError(f"module 'gaugeport.cli' has no attribute {name!r}")


def _load_app() -> Any:
    from gaugeport.cli import core, estimate, provenance, study, transport  # noqa: F401  (register verbs)
    from gaugeport.cli._app import app

    return app


def _paths_in(value: Any) -> list[Path]:
    if isinstance(value, Path):
        return [value]
    if isinstance(value, str) and value and "\x00" not in value:
        return [Path(value)]
    if isinstance(value, list | tuple):
        return [p for v in value for p in _paths_in(v)]
    return []


def _existing(p: Path) -> bool:
    try:
        return p.exists() or p.is_symlink()
    except (OSError, ValueError):
        return False


def check_command_paths(params: dict[str, Any], extra_args: Sequence[str]) -> dict[str, Path]:
    """Refuse, before the verb runs, any output that overlaps an input or another output; returns the outputs."""
    from gaugeport.cli._app import FILE_OUTPUTS, OUTPUT_PARAMS
    from gaugeport.core.fileio import check_outputs, check_replaceable

    outputs: dict[str, Path] = {}
    inputs: list[Path] = []
    for name, value in params.items():
        if name in OUTPUT_PARAMS:
            if value is not None:
                outputs[OUTPUT_PARAMS[name]] = Path(value)
        else:
            inputs += [p for p in _paths_in(value) if _existing(p)]
    inputs += [Path(a) for a in extra_args if not a.startswith("-") and _existing(Path(a))]
    # existence is left to each verb (some replace their own earlier output without --force)
    check_outputs(outputs, inputs, force=True)
    for label, path in outputs.items():  # always files: --force never turns a directory into one
        if label in FILE_OUTPUTS:
            check_replaceable(path, "file", label)
    return outputs


def _guard(invoke: Any) -> Any:
    @functools.wraps(invoke)
    def run(ctx: Any) -> Any:
        from gaugeport.core.fileio import reserved_outputs

        outputs = check_command_paths(dict(ctx.params), list(ctx.args))
        with reserved_outputs(outputs):  # one output, one writer: held from the first step to the last write
            return invoke(ctx)

    return run


def build_command() -> Any:
    """The click command of the app, every verb guarded by :func:`check_command_paths`."""
    import typer

    command = typer.main.get_command(_load_app())
    for sub in getattr(command, "commands", {}).values():
        sub.invoke = _guard(sub.invoke)
    return command


def _end_progress_bars() -> None:
    """Close every progress bar still drawn, so that an error starts on a fresh line of its own."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        with contextlib.suppress(Exception):  # a bar that cannot close must not hide the error
            bar.close()


def _print_error(message: str, hint: str | None) -> None:
    _end_progress_bars()
    print(f"error: {message}", file=sys.stderr)
    print(f"hint: {hint or 'run the verb with --help to see what it expects'}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: runs one verb; exit 0 ok, 1 verify FAIL or internal error, 2 bad input, 130/143 interrupted."""
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main thread: leave signals alone
        previous = None
    try:
        try:
            from gaugeport.core.fileio import io_session

            command = build_command()
            with io_session():
                code = _run_command(command, list(argv) if argv is not None else sys.argv[1:])
            sys.exit(code)  # as click's standalone mode does, success included
        except GaugeportError as exc:
            _print_error(exc.message, exc.hint)
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)
        except Terminated:
            print("terminated", file=sys.stderr)
            sys.exit(EXIT_TERMINATED)
        except SystemExit:
            raise
        except MemoryError:
            _print_error("out of memory", "use a smaller --batch-size / --tokens, or a machine with more memory")
            sys.exit(EXIT_BAD_INPUT)
        except OSError as exc:
            if os.environ.get("GAUGEPORT_DEBUG"):
                raise
            if exc.errno in _OS_BAD_INPUT:
                from gaugeport.core.fileio import os_error_to_gaugeport

                known = os_error_to_gaugeport(exc, Path(exc.filename) if exc.filename else None)
                if exc.errno in (errno.ENOENT, errno.ENAMETOOLONG, errno.ELOOP):
                    known = GaugeportError(f"{exc.strerror}: {exc.filename}", hint="check the path")
                _print_error(known.message, known.hint)
                sys.exit(EXIT_BAD_INPUT)
            _internal(exc)
        except Exception as exc:
            if os.environ.get("GAUGEPORT_DEBUG"):
                raise
            _internal(exc)
    except KeyboardInterrupt:  # a second Ctrl-C while reporting the first
        sys.exit(EXIT_INTERRUPTED)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run_command(command: Any, args: list[str]) -> int:
    """Run the click command; a usage error (unknown option, bad or missing value) is printed as
    ``error:`` and ``hint:`` like every other bad input. Returns the exit code."""
    import typer
    from typer.exceptions import TyperException  # typer's own click: its exceptions derive from this

    try:
        rv = command.main(args=args, prog_name="gaugeport", standalone_mode=False)
    except typer.Abort as exc:  # click turns Ctrl-C into Abort outside standalone mode
        raise KeyboardInterrupt from exc
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except TyperException as exc:
        if not hasattr(exc, "format_message"):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # no arguments: the help text, as click prints it
            return EXIT_BAD_INPUT
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "gaugeport"
        _print_error(exc.format_message(), f"run `{where} --help` to see what it takes")
        return EXIT_BAD_INPUT
    return rv if isinstance(rv, int) else 0


def _internal(exc: BaseException) -> None:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    _print_error(f"internal error: {type(exc).__name__}{': ' + text if text else ''} (please report)",
                 "this is a bug in gaugeport, not in your input; please report it with the command line "
                 "(GAUGEPORT_DEBUG=1 shows the traceback)")
    sys.exit(EXIT_INTERNAL)
