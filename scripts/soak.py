#!/usr/bin/env python3
"""Long chat-style runs watching memory, threads and files: specdec/bench/soak.py.

    python scripts/soak.py --tokens 4000    # needs specdec importable
    python -m specdec.bench.soak --tokens 4000   # the same, from a source checkout
"""
import sys

from specdec.bench.soak import main

if __name__ == "__main__":
    sys.exit(main())
