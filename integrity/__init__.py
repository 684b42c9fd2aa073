"""model-integrity: prove a model's artifacts are the committed ones before it ships."""

__version__ = "0.1.0"
