"""ensemble-kit: regenerate a VMAF corpus, retrain a LOSO ensemble, return a verdict."""

__version__ = "0.1.0"
