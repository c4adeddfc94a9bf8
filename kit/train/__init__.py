"""Corpus -> LOSO results: the model (one definition), the batched trainer and its plain reference, metrics.

Importing this package imports nothing heavy; `loso_files` (the results on disk) needs pandas, not
torch, and nothing in here imports the ffmpeg side of `kit.corpus`.
"""
