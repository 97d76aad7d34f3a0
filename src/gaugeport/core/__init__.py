"""Core: the gauge object, architecture tables, checkpoints, apply / verify / inspect."""
