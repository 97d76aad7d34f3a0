"""Estimation: activation moments, matching, alignment and chains of checkpoints."""
