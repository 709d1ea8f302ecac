"""Benchmarks of osiris_tasks: `python -m benchmarks.run [--quick]`; see benchmarks/README.md."""
