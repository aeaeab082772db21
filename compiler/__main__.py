"""`python -m einfold` is the `einfold` command."""

from .cli import main

raise SystemExit(main())
