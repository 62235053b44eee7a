"""`python -m esper` is the `esper` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
