"""Training (lesson 02): `fit`, `evaluate`, `predict`, their state, optimizers, metrics,
checkpoints with exact resume, `diagnose`, the learning-rate range test, and data-parallel
runs under a launcher."""
