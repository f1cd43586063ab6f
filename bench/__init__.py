"""The benchmark: `bench/run.py` (server against bare pipeline) and `bench/png.py` (PNG)."""
