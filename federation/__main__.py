"""``python -m federation`` runs the command line, for machines where scripts are not on PATH."""

from federation.cli import main

main()
