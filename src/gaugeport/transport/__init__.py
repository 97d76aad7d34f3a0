"""Transport artifacts between checkpoints related by a gauge (docs/transport.md).

One module per artifact kind, all applying the gauge through ``SignedPermutation.apply``:
``vectors`` (+ ``gguf_vectors``, the control-vector file format), ``sae``, ``coordinates``, ``adamw``,
``merge``; ``rules`` holds the vocabulary (``ArtifactKind``, and the SAE / Adam rule rows of
``rules.json``); ``detect`` picks the module for a path; ``audit`` re-expresses claims with these
transports. Every function takes a ``SignedPermutation`` (the caller reads a gauge file once) and
``perm_only`` to reproduce the S_d (permutation-only) baseline.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gaugeport.transport.adamw import transport_optimizer_state, transport_trainer_checkpoint
    from gaugeport.transport.coordinates import (
        transport_attributions,
        transport_coordinates,
        transport_coordinates_file,
        transport_csv,
        transport_json,
    )
    from gaugeport.transport.detect import KINDS, detect_kind, transport_artifact
    from gaugeport.transport.merge import merge_checkpoints, merge_models, merge_tensors
    from gaugeport.transport.rules import ArtifactKind
    from gaugeport.transport.sae import transport_sae_dir, transport_sae_state
    from gaugeport.transport.sae_formats import detect_sae_format, transport_sae_object, transport_sae_path
    from gaugeport.transport.sites import canonical_site, hook_to_site, module_to_site, site_to_hook, site_to_module
    from gaugeport.transport.vectors import transport_vector, transport_vector_file

# name -> module; imported on first use, so that ``gaugeport.transport.rules`` (and the command line's
# help) loads without torch.
_LAZY = {
    **dict.fromkeys(("transport_optimizer_state", "transport_trainer_checkpoint"), "adamw"),
    **dict.fromkeys(("transport_attributions", "transport_coordinates", "transport_coordinates_file",
                     "transport_csv", "transport_json"), "coordinates"),
    **dict.fromkeys(("KINDS", "detect_kind", "transport_artifact"), "detect"),
    **dict.fromkeys(("merge_checkpoints", "merge_models", "merge_tensors"), "merge"),
    "ArtifactKind": "rules",
    **dict.fromkeys(("transport_sae_dir", "transport_sae_state"), "sae"),
    **dict.fromkeys(("detect_sae_format", "transport_sae_object", "transport_sae_path"), "sae_formats"),
    **dict.fromkeys(("canonical_site", "hook_to_site", "module_to_site", "site_to_hook", "site_to_module"), "sites"),
    **dict.fromkeys(("transport_vector", "transport_vector_file"), "vectors"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"gaugeport.transport.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'gaugeport.transport' has no attribute {name!r}")


__all__ = [
    "ArtifactKind", "KINDS", "detect_kind", "transport_artifact",
    "transport_vector", "transport_vector_file",
    "transport_sae_dir", "transport_sae_state", "transport_sae_path", "transport_sae_object", "detect_sae_format",
    "transport_coordinates", "transport_attributions", "transport_coordinates_file", "transport_json", "transport_csv",
    "transport_optimizer_state", "transport_trainer_checkpoint",
    "merge_models", "merge_checkpoints", "merge_tensors",
    "hook_to_site", "site_to_hook", "canonical_site", "module_to_site", "site_to_module",
]
