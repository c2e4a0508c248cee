"""Frozen-VLM referring segmentation (F-LMM style): attention collection, mask head, SAM refiner."""
