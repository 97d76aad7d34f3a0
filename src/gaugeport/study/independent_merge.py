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
from gaugeport.study.evaluate import token_losses
from gaugeport.study.stats import bootstrap


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
    models = {"model_a": a, "model_b": b, "none": merge_models(a, b, SignedPermutation.identity(ctx.d)),
              "residual": merge_models(a, b, residual), "full": merge_models_full(a, b, full)}
    return {key: ctx.keep(f"independent_merge.{key}", bootstrap(token_losses(m, ids), what="tokens"))
            for key, m in models.items()}
