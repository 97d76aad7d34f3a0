"""The wheel as a user gets it: built from this tree, installed with no extra into a fresh venv (torch 2.13.0
first, from pip's local wheel), and every core verb run there on files (tests/packaging/wheel_smoke.py),
SAELens-format transport included, without sae_lens, sparsify, datasets, matplotlib or ray.

One build and one venv for the module (about a minute on 2 idle cores, most of it unpacking torch);
it needs pip to reach its index for the core's dependencies, as `make test` does to set up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import gaugeport

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.wheel]
OPTIONAL = {"sae-lens", "eai-sparsify", "datasets", "matplotlib", "ray", "mkdocs", "mkdocstrings", "pytest",
            "numba"}


def _sh(*cmd: object, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``python -m build --wheel`` on a copy of the tree (the build leaves nothing in the worktree)."""
    tree = tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path_factory.mktemp("dist")
    _sh(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, tree)
    (found,) = dist.glob("gaugeport-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv (no system site-packages) with torch==2.13.0, then the wheel and the core's dependencies."""
    path = tmp_path_factory.mktemp("venv")
    _sh(sys.executable, "-m", "venv", "--without-pip", path)
    py = path / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", py, "install", "--quiet", "--disable-pip-version-check"]
    _sh(*pip, "torch==2.13.0")
    _sh(*pip, wheel)
    return path


@pytest.fixture(scope="module")
def facts(venv, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("work")
    proc = _sh(venv / "bin" / "python", ROOT / "tests" / "packaging" / "wheel_smoke.py", work, cwd=work)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _files_under_src() -> set[str]:
    return {p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src" / "gaugeport").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_the_wheel_holds_every_module_table_and_rules_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert _files_under_src() - names == set()
    assert {"gaugeport/transport/rules.json", "gaugeport/core/architectures/llama.json",
            "gaugeport/provenance/same.py"} <= names


def test_the_wheel_has_the_package_version_the_script_and_a_lean_core(wheel):
    dist_info = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(zipfile.ZipFile(wheel).read(dist_info).decode())
    assert meta["Version"] == gaugeport.__version__
    core = {re.split(r"[<>=!~ ;\[]", r)[0].lower() for r in meta.get_all("Requires-Dist") if "extra ==" not in r}
    assert "torch" in core and "transformers" in core and core & OPTIONAL == set()
    assert {"sae", "data", "study", "ray", "fast", "docs", "all", "dev"} <= set(meta.get_all("Provides-Extra"))
    entry = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("entry_points.txt"))
    assert "gaugeport = gaugeport.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_the_fresh_venv_has_the_wheel_and_no_optional_package(facts, venv):
    assert Path(facts["gaugeport_file"]).is_relative_to(venv)
    assert facts["absent"] == {"sae_lens": True, "sparsify": True, "datasets": True, "matplotlib": True,
                               "ray": True, "numba": True}  # canonicalize / fingerprint run the numpy gather
    assert facts["script_version"] == f"gaugeport {gaugeport.__version__}"


@pytest.mark.parametrize("verb", ["inspect", "apply", "verify", "collect", "align", "compose", "inverse", "merge",
                                  "same", "canonicalize", "fingerprint_a", "fingerprint_b", "transport_sae",
                                  "transport_vector", "audit"])
def test_every_core_verb_runs_without_extras(facts, verb):
    got = facts["verbs"][verb]
    assert got["code"] == 0, got


def test_the_core_verbs_give_the_right_answers_there(facts):
    v = facts["verbs"]
    assert v["verify"]["out"][-1].startswith("PASS")
    assert json.loads("\n".join(v["same"]["out"]))["verdict"] == "identical"
    assert v["fingerprint_a"]["out"] == v["fingerprint_b"]["out"]
    assert facts["sae_max_err"] == 0.0 and facts["vector_max_err"] == 0.0


def test_an_optional_part_without_its_extra_is_bad_input_naming_the_extra(facts):
    v = facts["verbs"]
    assert v["reproduce"]["code"] == 2 and v["reproduce"]["err"][-1] == "hint: pip install 'gaugeport[study]'"
    assert v["collect_dataset"]["code"] == 2
    assert v["collect_dataset"]["err"][-1] == "hint: pip install 'gaugeport[data]'"
    assert facts["outputs_of_refused"] == []
