"""The paper's own figures (from the abstract of arXiv 2606.31963), quoted beside ours.

These are citations, not results: every number of ours in the report is measured by the run.
"""

from __future__ import annotations

PAPER = {
    "trajectory": {"composed": 0.911, "endpoint": 0.603, "steps": 1500,
                   "note": "cross-run coordinate accuracy at 1,500 steps"},
    "sae_nmse": {"signed": 0.004, "perm_only": 1.08, "note": "TinyLlama SAE reconstruction NMSE"},
    "steering_preserved": {"signed": 0.958, "perm_only": 0.172, "note": "Qwen sentiment steering effect preserved"},
    "refusal": "refusal steering reverses sign under S_d",
    "matching": "raw signed matching is capped by the fraction of positive signs (about 50% for a random gauge)",
    "function": "signed permutations preserve RMSNorm models; per-coordinate signs break LayerNorm",
    "merge": "merges behave the same way (signed alignment works, permutation-only does not)",
    "adamw": "signed transport of AdamW state preserves the resumed trajectory; permutation-only does not",
    "audit": "claims in gauge-covariant form survive a gauge sweep; bare index claims do not",
}
