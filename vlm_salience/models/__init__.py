"""Model loading (real checkpoints by hub id or local path) and tiny offline builders for tests and the demo."""
