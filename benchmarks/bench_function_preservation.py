"""Function preservation per architecture: max logit difference after a random gauge.

For each supported architecture: a tiny model (randomised gains and biases), a random gauge in its
group (signed for RMSNorm, permutation-only for LayerNorm), applied through a checkpoint on disk
(the streaming path users run), then logits compared on seeded probe tokens. As a control, the
LayerNorm models are also given per-coordinate signs (bypassing the guard) to show the break.
Families published with a multi-token-prediction layer (DeepSeek-V3, GLM-4.5) are also measured on
that layer's logits, computed by transformers' own MTP code from the gauged checkpoint.
Writes JSON; prints one row per architecture.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

from gaugeport.core.apply import apply_gauge_to_checkpoint, apply_gauge_to_state_dict
from gaugeport.core.archspec import get_spec, supported_architectures
from gaugeport.core.gauge import SignedPermutation
from gaugeport.core.verify import compare_models, load_model
from gaugeport.models.mtp import mtp_outputs, save_tiny_with_mtp
from gaugeport.models.tiny import probe_ids, save_tiny, tiny_model

MTP_FAMILIES = ("deepseek_v3", "glm4_moe")


def measure(model_type: str, seeds: int) -> dict[str, float]:
    spec = get_spec(model_type)
    worst_abs = worst_rel = worst_hidden = 0.0
    forced = None
    for seed in range(seeds):
        with tempfile.TemporaryDirectory() as tmp:
            src = save_tiny(model_type, Path(tmp) / "a", seed=seed)
            g = SignedPermutation.random(32, seed=100 + seed)
            g = g if spec.allows_coordinate_signs else g.perm_only()
            apply_gauge_to_checkpoint(src, g, Path(tmp) / "b", progress=False)
            res = compare_models(load_model(src), load_model(Path(tmp) / "b"), probe_ids(96, 4, 32, seed), g)
        worst_abs, worst_rel = max(worst_abs, res.max_abs_diff), max(worst_rel, res.max_rel_diff)
        worst_hidden = max(worst_hidden, res.hidden_max_rel_diff or 0.0)
    if not spec.allows_coordinate_signs:  # the maths shown: per-coordinate signs break LayerNorm
        model = tiny_model(model_type)
        g = SignedPermutation.random(32, seed=1)
        broken = copy.deepcopy(model)
        rms_like = type(spec)(**{**spec.__dict__, "norm": "rms"})
        broken.load_state_dict(apply_gauge_to_state_dict(model.state_dict(), g, rms_like))
        forced = compare_models(model, broken, probe_ids(96, 4, 32, 0), g).max_abs_diff
    out = {"norm": spec.norm, "group": spec.group, "max_abs_logit_diff": worst_abs,
           "max_rel_logit_diff": worst_rel, "max_rel_hidden_diff": worst_hidden,
           "forced_coordinate_signs_max_abs_logit_diff": forced}
    if model_type in MTP_FAMILIES:
        out["mtp_max_abs_logit_diff"] = measure_mtp(model_type, seeds)
    return out


def measure_mtp(model_type: str, seeds: int) -> float:
    """Max |MTP logit difference| after a random gauge applied to a checkpoint with an MTP layer."""
    worst = 0.0
    for seed in range(seeds):
        with tempfile.TemporaryDirectory() as tmp:
            src = save_tiny_with_mtp(model_type, Path(tmp) / "a", seed=seed)
            g = SignedPermutation.random(32, seed=100 + seed)
            apply_gauge_to_checkpoint(src, g, Path(tmp) / "b", progress=False)
            ids = probe_ids(96, 4, 32, seed)
            worst = max(worst, (mtp_outputs(src, ids)[1] - mtp_outputs(Path(tmp) / "b", ids)[1]).abs().max().item())
    return worst


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed per architecture instead of three")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("function_preservation.json"))
    args = ap.parse_args(argv)
    results = {mt: measure(mt, 1 if args.quick else 3) for mt in supported_architectures()}
    print(f"{'architecture':<17} {'group':<12} {'max |dlogit|':>12} {'rel':>9} {'hidden rel':>10} "
          f"{'forced signs':>12} {'MTP |dlogit|':>12}")
    for mt, r in results.items():
        forced, mtp = r["forced_coordinate_signs_max_abs_logit_diff"], r.get("mtp_max_abs_logit_diff")
        print(f"{mt:<17} {r['group']:<12} {r['max_abs_logit_diff']:>12.2e} {r['max_rel_logit_diff']:>9.1e} "
              f"{r['max_rel_hidden_diff']:>10.1e} {'' if forced is None else f'{forced:.2e}':>12} "
              f"{'' if mtp is None else f'{mtp:.2e}':>12}")
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
