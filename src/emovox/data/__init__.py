"""Data: corpora on disk, labels, speaker-independent splits, the synthetic corpus, the feature and hidden-state caches, batches."""
