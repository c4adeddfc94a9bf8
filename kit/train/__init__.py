"""Model, batched LOSO training over seeds x folds, and metrics (no ffmpeg in here)."""
