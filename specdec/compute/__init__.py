"""How this CPU multiplies: the matmul paths and the policy that picks one (kernels), the
probe that times them in a child process and its per-machine cache (probe, probe_child,
probe_process, probe_cache), what a pass costs from those timings (profile), and attention
reading the KV cache in place (attention)."""
