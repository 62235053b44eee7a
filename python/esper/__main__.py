"""`python -m esper` is the `esper` command."""

from .cli import main

raise SystemExit(main())
