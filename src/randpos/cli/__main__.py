"""``python -m randpos.cli``: the ``randpos`` command."""

from randpos.cli import main

main()
