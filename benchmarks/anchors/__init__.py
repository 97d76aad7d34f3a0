"""Re-implementations of published model-provenance tests, used as anchors by ``provenance_suite.py``.

Written here from the papers and their public code (no code copied); each module's docstring names the
file and function followed. They live in benchmarks/, not in the library: they are yardsticks, not tools.
Every anchor takes two Hugging Face checkpoint directories (Llama tensor names) and returns a dict with
``score`` (higher: more related; None when the test does not apply to the pair) and, where the test
has one, ``p_value``.
"""
