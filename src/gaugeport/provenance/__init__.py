"""Provenance: is one checkpoint derived from another? The full-network gauge at work.

``same`` (identical / derived / independent, with a p-value and the recovered gauge), ``canonical``
(the gauge orbit's canonical representative and its fingerprint), ``fullmerge`` (merging runs
trained apart), ``disguise`` (function-preserving disguises a copier may apply: folded gains, then a
rotation) and ``baseline`` (a permutation-only independence test, for comparison with ``same``).
"""
