"""``python -m randpos``: the ``randpos`` command."""

from randpos.cli import main

main()
