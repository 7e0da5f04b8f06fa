#!/usr/bin/env python3
"""Write a random-weight checkpoint with a real model's shapes: specdec/bench/synthetic.py.

    python scripts/make_synthetic.py llama2-7b OUT --store    # needs specdec importable
    python -m specdec.bench.synthetic llama2-7b OUT --store   # the same, from a source checkout
"""
import sys

from specdec.bench.synthetic import main

if __name__ == "__main__":
    sys.exit(main())
