"""The main job: the retrieval system end to end on synthetic pedestrians (`run.py`), and its
command (`cli.py`)."""
