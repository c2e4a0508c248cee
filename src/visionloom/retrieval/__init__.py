"""Text-based person retrieval, "Understanding by Generation": losses, metrics (models and data follow)."""
