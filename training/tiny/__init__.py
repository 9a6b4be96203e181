"""The embedded default: a synthetic VQA benchmark and the sparsecut-tiny model family trained on it."""
