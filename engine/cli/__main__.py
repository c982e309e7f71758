"""``python -m anomalens.engine.cli``: the ``anomalens`` command without its console script."""

from . import main

main()
