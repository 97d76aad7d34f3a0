"""9. Merges of independently trained runs: no alignment, residual-only, full-network alignment.

The base and a second base trained from another seed and data order share nothing but their
architecture and data. Their average is measured as stored, after aligning the residual stream
(signed matching on activations), and after aligning the whole network (residual, then every
layer's MLP units on their activation correlations and heads on their weights).
"""

from __future__ import annotations

from typing import Any

from gaugeport.core.gauge import SignedPermutation
from gaugeport.study.context import Context
from gaugeport.study.evaluate import lm_loss


def measure(ctx: Context) -> dict[str, Any]:
    from gaugeport.estimate.align import align_models
    from gaugeport.provenance.fullmerge import estimate_full_gauge_from_activations, merge_models_full
    from gaugeport.transport.merge import merge_models

    if ctx.art.base_2 is None:
        return {}
    a, b = ctx.model(ctx.art.base), ctx.model(ctx.art.base_2)
    ids = ctx.eval_ids()
    batches = ctx.batches()
    residual = align_models(a, b, batches, progress=False).gauge
    full = estimate_full_gauge_from_activations(a, b, batches, residual=residual)
    return {
        "model_a": lm_loss(a, ids), "model_b": lm_loss(b, ids),
        "none": lm_loss(merge_models(a, b, SignedPermutation.identity(ctx.d)), ids),
        "residual": lm_loss(merge_models(a, b, residual), ids),
        "full": lm_loss(merge_models_full(a, b, full), ids),
    }
