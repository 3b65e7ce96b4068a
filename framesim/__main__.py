"""``python -m framesim`` is the ``framesim`` command."""

from framesim.cli import main

main()
