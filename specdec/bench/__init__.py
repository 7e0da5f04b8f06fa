"""The benchmark harness (`specdec bench io|offload`): workloads, contenders run as workers
under a RAM cap, reports and plots, memory caps and I/O probes, synthetic model makers.

Nothing in specdec's decoding path or in `offload` imports this package.
"""
