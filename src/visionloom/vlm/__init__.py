"""A tiny VLM that has learned the synthetic scenes: pretraining and answer accuracy."""
