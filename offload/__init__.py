"""Where the target's weights come from. Never imports specdec.

    pack.pack(src, out, dtype="bfloat16")     HF safetensors dir / .gguf -> layer store
    format.open_store(path) -> Store          manifest + size checks; format.verify(store) -> problems
    prefetch.StreamedWeights(store, pinned, ring_size, dtype)
                                              weights source: .resident, .layers(), .stats
    budget.plan_memory(store, ram, ...)       RAM budget -> pinned layers, ring size (or a clear error)
    reader.DirectReader                       O_DIRECT reads into aligned buffers, zero-copy tensors
    reader.read_tensors(path, tensors, size)  one file -> aligned buffer -> zero-copy tensor views
    shapes.ModelShape                         a model's tensor names, shapes, parameter counts
    expert_names                              one spelling of a mixture-of-experts layer's tensors
    expert_pack.ExpertWriter                  each expert one aligned, checksummed extent (pack)
    expert_stream.ExpertReader                a pass reads only the experts it routes to
    expert_cache.ExpertPool                   the expert buffers, an LRU cache inside the budget
    errors.InternalError                      a broken invariant (a bug), never bad input
"""
