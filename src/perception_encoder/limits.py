"""Bounds on what one command or call may ask for, stated once (torch-free, so the CLI can show them)."""

#: Largest batch size accepted: far beyond any memory, small enough for every loader's arithmetic.
MAX_BATCH_SIZE = 65536
#: Most frames taken from one video at once (``load_video``, ``pe embed --frames``): 256 decoded 1080p
#: frames already hold 1.6 GB. Longer videos are read in spans with ``video.iter_video_chunks``.
MAX_FRAMES = 256
