"""Thin wrapper: `python scripts/train_demo_draft.py ...` (or `python -m scripts.train_demo_draft`)
runs the demo draft trainer, tools/draft (also `python -m tools.draft`)."""
from tools.draft.cli import main

if __name__ == "__main__":
    main()
