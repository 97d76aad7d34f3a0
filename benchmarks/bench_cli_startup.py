"""Command-line start-up: `gaugeport --help`, `gaugeport VERB --help` and `--version` against `python -c pass`.

Each command runs in a fresh interpreter (``python -m gaugeport ...``, the entry point the console script
calls), ``--repeat`` times, interleaved with the baseline so that a loaded machine slows both alike; the
figure is the median wall time, and its ratio to the baseline's median in the same run. For scale, the
same run times ``import torch, transformers`` (what a help page cost when the verbs imported the library
at start-up) and checks which heavy modules a help page loads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
HEAVY = ("torch", "transformers", "safetensors", "numpy")
_LOADED = ("import runpy, sys, json\nargv, heavy = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))\n"
           "sys.argv = ['gaugeport', *argv]\n"
           "try:\n    runpy.run_module('gaugeport', run_name='__main__')\nexcept SystemExit:\n    pass\n"
           "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & heavy)), file=sys.stderr)")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)}


def _time(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), check=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--out", type=Path, default=HERE / "bench_cli_startup.json")
    args = ap.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 7)
    py = sys.executable
    cases = {
        "python -c pass (baseline)": [py, "-c", "pass"],
        "gaugeport --help": [py, "-m", "gaugeport", "--help"],
        "gaugeport --version": [py, "-m", "gaugeport", "--version"],
        "gaugeport apply --help": [py, "-m", "gaugeport", "apply", "--help"],
        "gaugeport transport --help": [py, "-m", "gaugeport", "transport", "--help"],
        "import torch, transformers (for scale)": [py, "-c", "import torch, transformers"],
    }
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeat):  # interleaved: a burst of load slows every case, not one
        for name, cmd in cases.items():
            times[name].append(_time(cmd))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["python -c pass (baseline)"]
    loaded = {}
    for argv_ in (["--help"], ["apply", "--help"], ["--version"]):
        proc = subprocess.run([py, "-c", _LOADED, json.dumps(argv_), json.dumps(HEAVY)], capture_output=True,
                              text=True, env=_env(), check=True)
        loaded[" ".join(argv_)] = json.loads(proc.stderr.strip().splitlines()[-1])
    results = {k: {"median_seconds": med[k], "ratio_vs_python_pass": med[k] / base, "runs_seconds": times[k]}
               for k in cases}
    help_s = med["gaugeport --help"]
    heavy_s = med["import torch, transformers (for scale)"]
    payload = {
        "repeat": repeat, "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
        "load_average_1min": [load_before, os.getloadavg()[0]],  # before and after: a shared machine shows here
        "results": results, "heavy_modules_loaded": loaded,
        "headline": [
            ["gaugeport --help / python -c pass", f"{help_s / base:.2f}x",
             f"{help_s:.2f} s vs {base:.2f} s, median of {repeat}, same run"],
            ["gaugeport apply --help / python -c pass", f"{med['gaugeport apply --help'] / base:.2f}x",
             f"{med['gaugeport apply --help']:.2f} s"],
            ["import torch, transformers / gaugeport --help", f"{heavy_s / help_s:.1f}x",
             f"{heavy_s:.2f} s: what each help page cost before the verbs imported lazily"],
        ],
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    for row in payload["headline"]:
        print(" | ".join(row))
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
