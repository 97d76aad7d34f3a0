"""Shared fixtures: tiny checkpoints on disk and an in-process CLI runner."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import pytest
from hypothesis import settings

from gaugeport.models.tiny import save_tiny


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory):
    """Factory: a saved tiny checkpoint per (model_type, seed), built once per session."""
    cache: dict[tuple[str, int], Path] = {}

    def make(model_type: str, seed: int = 0) -> Path:
        key = (model_type, seed)
        if key not in cache:
            cache[key] = save_tiny(model_type, tmp_path_factory.mktemp(f"{model_type}-{seed}") / "ckpt", seed=seed)
        return cache[key]

    return make


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Run ``gaugeport ARGS`` in-process through the real entry point; returns (exit_code, stdout, stderr)."""
    from gaugeport.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["gaugeport", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


# Property tests judge correctness, not speed: no per-example deadline (a loaded CI machine would
# otherwise fail a correct example for taking more than hypothesis's default 200 ms).
settings.register_profile("gaugeport", deadline=None)
settings.load_profile("gaugeport")


@pytest.fixture
def disk_fills_at(monkeypatch: pytest.MonkeyPatch):
    """``disk_fills_at(cls, method, n)``: the ``n``-th call of ``cls.method`` raises ENOSPC, as a disk that
    fills in the middle of a write would; the other calls go through."""

    def patch(cls: type, method: str, n: int) -> None:
        real = getattr(cls, method)
        calls = {"n": 0}

        def full_disk(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, *args, **kwargs)

        monkeypatch.setattr(cls, method, full_disk)

    return patch
