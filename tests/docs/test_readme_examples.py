"""The README's examples run as written, in order, from an empty directory.

Every ```` ```bash ```` and ```` ```python ```` block of README.md is extracted in order and run in one
fresh directory; a line marked ``[not in make test]`` is skipped (the README says which and why). Each
command must exit 0. To pay torch's import once, ``gaugeport ...`` lines run through the real entry
point (``gaugeport.cli.main``) in this process, ``python -m gaugeport.examples ...`` through its
``main``, ``python -c CODE`` and python blocks are executed here, and every other line (``printf``,
``cat <<EOF``) runs in bash. ``GAUGEPORT_README_SUBPROCESS=1`` runs every bash line in bash instead,
exactly as typed (slower: one interpreter start per line).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
SKIP_MARK = "[not in make test]"
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Step:
    lang: str  # "bash" or "python"
    text: str  # one shell command (continuations joined, a heredoc kept whole) or one python block
    line: int  # where it starts in README.md


def extract(markdown: str) -> tuple[list[Step], list[str]]:
    """(steps to run, skipped lines) from the bash and python blocks of ``markdown``, in order."""
    steps: list[Step] = []
    skipped: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group(1):
            i += 1
            continue
        lang, start = m.group(1), i + 1
        j = start
        while not lines[j].startswith("```"):
            j += 1
        body = lines[start:j]
        if lang == "python":
            steps.append(Step("python", "\n".join(body), start + 1))
        elif lang == "bash":
            _split_commands(body, start, steps, skipped)
        i = j + 1
    return steps, skipped


def _split_commands(body: list[str], offset: int, steps: list[Step], skipped: list[str]) -> None:
    k = 0
    while k < len(body):
        line, first = body[k], k
        k += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        heredoc = re.search(r"<<'?(\w+)'?", line)
        while line.endswith("\\"):
            line = line[:-1] + body[k].strip()
            k += 1
        if heredoc:
            end = heredoc.group(1)
            while body[k] != end:
                line += "\n" + body[k]
                k += 1
            line += "\n" + body[k]
            k += 1
        if SKIP_MARK in line:
            skipped.append(line)
            continue
        steps.append(Step("bash", line, offset + first + 1))


def _run_step(step: Step, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run one step in the current directory; (exit code, stdout + stderr)."""
    if step.lang == "python":
        return _exec(step.text, capsys)
    argv = shlex.split(step.text, comments=True) if "<<" not in step.text else []
    in_process = not os.environ.get("GAUGEPORT_README_SUBPROCESS")
    if in_process and argv[:1] == ["gaugeport"]:
        from gaugeport.cli import main

        return _call(lambda: main(argv[1:]), capsys)
    if in_process and argv[:3] == ["python", "-m", "gaugeport.examples"]:
        from gaugeport.examples import main as examples_main

        return _call(lambda: examples_main(argv[3:]), capsys)
    if in_process and argv[:2] == ["python", "-c"] and len(argv) == 3:
        return _exec(argv[2], capsys)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    src = str(README.parents[0] / "src")
    env["PYTHONPATH"] = f"{src}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else src
    shim = Path(".readme-bin")
    if not shim.exists():  # `python` and `gaugeport` as in an activated .venv, for this interpreter
        shim.mkdir()
        python = shlex.quote(sys.executable)
        for name, target in (("python", python), ("gaugeport", f"{python} -m gaugeport.cli")):
            (shim / name).write_text(f'#!/bin/sh\nexec {target} "$@"\n')
            (shim / name).chmod(0o755)
    env["PATH"] = f"{shim.resolve()}{os.pathsep}{env['PATH']}"
    done = subprocess.run(["bash", "-c", step.text], env=env, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def _call(fn, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        fn()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out + out.err


def _exec(code: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    def run() -> None:
        exec(compile(code, "<README>", "exec"), {"__name__": "__main__"})

    return _call(run, capsys)


def test_the_readme_marks_its_skipped_examples_and_runs_every_other_one() -> None:
    steps, skipped = extract(README.read_text())
    assert len(steps) >= 40 and all(s.text.strip() for s in steps)
    verbs = {shlex.split(s.text, comments=True)[1] for s in steps if s.text.startswith("gaugeport ")}
    for verb in ("inspect", "apply", "verify", "collect", "align", "compose", "inverse", "transport", "merge",
                 "audit", "same", "canonicalize", "fingerprint"):
        assert verb in verbs, f"the README has no example of `gaugeport {verb}` that make test runs"
    assert all(SKIP_MARK in s for s in skipped)
    assert any("reproduce" in s for s in skipped)  # minutes: the README says so on the line


def test_extract_joins_continuations_and_keeps_heredocs_whole() -> None:
    md = "```bash\n# c\na \\\n  b\ncat > f <<'EOF'\n{x}\nEOF\nz  # [not in make test]\n```\n```sh\nmake\n```\n"
    steps, skipped = extract(md)
    assert [s.text for s in steps] == ["a b", "cat > f <<'EOF'\n{x}\nEOF"]
    assert skipped == ["z  # [not in make test]"]


def test_readme_examples_run_in_order_from_an_empty_directory(tmp_path, monkeypatch, capsys) -> None:
    steps, _ = extract(README.read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / ".cache"))
    results: list[tuple[Step, str]] = []
    for step in steps:
        code, out = _run_step(step, capsys)
        where = f"README.md line {step.line} failed (exit {code}):\n{step.text}"
        assert code == 0, f"{where}\n--- output ---\n{out[-3000:]}"
        results.append((step, out))
    outputs = {step.text: out for step, out in results}
    # what the README's comments promise about the output
    verify = [out for text, out in outputs.items() if text.startswith("gaugeport verify")]
    assert verify and all("PASS" in out for out in verify)
    prints = [out for text, out in outputs.items() if text.startswith("gaugeport fingerprint")]
    assert len(prints) == 2 and prints[0].split()[0] == prints[1].split()[0], "gauged copies must share a fingerprint"
    audit = next(out for text, out in outputs.items() if text.startswith("gaugeport audit"))
    assert "(1 gauge-covariant, 2 index-bound)" in audit, "bare claims are index-bound, the framed one survives"
    same = next(out for text, out in outputs.items() if text.startswith("gaugeport same"))
    assert '"verdict": "identical"' in same
    python = next(out for step, out in results if step.lang == "python")
    assert "B_d" in python and "'full': 1.0" in python
