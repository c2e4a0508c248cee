"""visionloom: image tokens into vision-language models, correctly, and three research systems on top."""

__version__ = "0.1.0"
