"""Where the target's weights come from. Never imports specdec.

    pack.pack(src, out, dtype="bfloat16")     HF safetensors dir / .gguf -> layer store
    format.open_store(path) -> Store          manifest + size checks; format.verify(store) -> problems
    prefetch.StreamedWeights(store, pinned, ring_size, dtype)
                                              weights source: .resident, .layers(), .stats
    budget.plan_memory(store, ram, ...)       RAM budget -> pinned layers, ring size (or a clear error)
    reader.DirectReader                       O_DIRECT reads into aligned buffers, zero-copy tensors
    reader.read_tensors(path, tensors, size)  one file -> aligned buffer -> zero-copy tensor views
    shapes.ModelShape                         a model's tensor names, shapes, parameter counts
    errors.InternalError                      a broken invariant (a bug), never bad input
"""
