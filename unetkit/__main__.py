"""``python -m unetkit`` is the ``unetkit`` command."""

from .cli.main import main

raise SystemExit(main())
