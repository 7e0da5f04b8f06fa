"""Thin wrapper: `python scripts/train_demo_draft.py ...` (or `python -m scripts.train_demo_draft`)
runs the demo draft trainer, specdec/train_draft.py (also `python -m specdec.train_draft`)."""
from specdec.train_draft import main

if __name__ == "__main__":
    main()
