"""``python -m agi_app`` runs the command line (see :mod:`agi_app.cli`)."""

from agi_app.cli import main

raise SystemExit(main())
