"""Defaults that the command line shows in its help: kept here, without torch, so help starts at once."""

VERIFY_TOL = 1e-4  # verify: relative to the largest |logit| of A; float32 reorderings give ~1e-6
