"""Reference clips -> sources -> grid of cells -> corpus.parquet (ffmpeg + libvmaf; no torch)."""
