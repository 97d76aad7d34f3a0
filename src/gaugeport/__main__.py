"""``python -m gaugeport``: the same entry point as the ``gaugeport`` command."""

from gaugeport.cli import main

main()
