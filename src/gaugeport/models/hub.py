"""Moved to :mod:`gaugeport.core.hub` (checkpoints are opened in core); kept so old imports work."""

from gaugeport.core.hub import hub_cache_dir, hub_offline, hub_provenance, parse_hub_id, resolve_checkpoint

__all__ = ["hub_cache_dir", "hub_offline", "hub_provenance", "parse_hub_id", "resolve_checkpoint"]
