"""Where the target's weights come from: pack a checkpoint into a layer store, read it
uncached, and stream its layers with prefetch. Never imports specdec."""
