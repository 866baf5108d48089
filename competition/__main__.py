"""`python -m competition` is the `competition` console script."""
from .cli import main

raise SystemExit(main())
