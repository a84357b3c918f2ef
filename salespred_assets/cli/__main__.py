"""``python -m salespred_assets.cli``: the same command as the ``salespred`` console script."""

from salespred_assets.cli import main

main()
