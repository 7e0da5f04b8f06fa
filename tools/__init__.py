"""Offline tooling that is not part of the runtime: data generation, distillation and
measurement of drafts, bench workload builders. `import specdec` never loads it (the runtime
must not depend on it: tests/test_import_graph.py checks), and the wheel does not ship it; run
it from a checkout's root as `python -m tools.NAME`."""
