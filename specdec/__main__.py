"""`python -m specdec ...`: the same as the `specdec` command (for a checkout not installed)."""
import sys

from .cli import main

sys.exit(main())
