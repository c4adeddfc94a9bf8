"""LOSO results -> verdict (gate) -> models (export, predict) -> report -> bundle, and run-vs-run compare."""
