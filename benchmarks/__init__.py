"""Benchmarks of llmframe against baselines measured in the same run (``python -m benchmarks.<name>``)."""
