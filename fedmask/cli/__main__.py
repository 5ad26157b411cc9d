"""``python -m fedmask.cli ...`` is the ``fedmask`` command."""

from fedmask.cli import main

main()
