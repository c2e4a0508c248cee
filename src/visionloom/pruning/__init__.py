"""Vision-token pruning: pruners, applying a keep decision through the image-token layer, evaluation."""
