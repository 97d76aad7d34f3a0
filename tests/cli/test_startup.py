"""The command line starts at once: help pages and --version import neither torch nor transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gaugeport

SRC = Path(__file__).resolve().parents[2] / "src"
HEAVY = ("torch", "transformers", "safetensors", "sae_lens", "datasets", "matplotlib", "ray")

_PROBE = """
import contextlib, io, json, sys
from gaugeport.cli import build_command, main
verbs = sorted(build_command().commands)
codes = {}
for argv in (["--help"], ["--version"], *([v, "--help"] for v in verbs)):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as exc:
            codes[" ".join(argv)] = exc.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[1])))
print(json.dumps({"verbs": verbs, "codes": codes, "heavy": heavy}))
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)


def test_every_help_page_and_the_version_load_without_torch_or_transformers():
    proc = _run("-c", _PROBE, json.dumps(HEAVY))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"inspect", "apply", "verify", "align", "collect", "compose", "inverse", "transport", "merge", "same",
            "canonicalize", "fingerprint", "audit", "reproduce"} <= set(got["verbs"])
    assert set(got["codes"].values()) == {0}, got["codes"]
    assert len(got["codes"]) == len(got["verbs"]) + 2
    assert got["heavy"] == []


def test_python_dash_m_gaugeport_prints_the_package_version():
    proc = _run("-m", "gaugeport", "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"gaugeport {gaugeport.__version__}"
