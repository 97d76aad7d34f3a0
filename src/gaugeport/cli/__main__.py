"""``python -m gaugeport.cli``: the same entry point as the ``gaugeport`` command."""

from gaugeport.cli import main

main()
