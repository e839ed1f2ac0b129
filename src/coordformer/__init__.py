"""coordformer: Transformers that attend to Euclidean distance via linear coordinate embeddings."""

__version__ = "0.1.0"
