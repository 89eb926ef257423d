"""``python -m worker.cli`` runs the ``sandrun`` command."""

from worker.cli import main

main()
