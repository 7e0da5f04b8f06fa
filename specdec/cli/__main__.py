"""`python -m specdec.cli ...`: the same as the `specdec` command."""
import sys

from .commands import main

sys.exit(main())
