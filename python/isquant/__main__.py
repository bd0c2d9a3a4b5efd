"""``python -m isquant ...``: the ``isquant`` command."""

from ._cli import main

main()
