"""``python -m stepflow`` is the ``stepflow`` command."""

from stepflow._surfaces.cli import main

raise SystemExit(main())
