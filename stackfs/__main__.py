"""``python -m stackfs`` is the ``stackfs`` command."""

from stackfs.cli import main

raise SystemExit(main())
