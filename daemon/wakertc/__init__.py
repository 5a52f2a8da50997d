"""wakertc: an always-on voice assistant daemon for Raspberry-Pi-class devices."""

import os

# One BLAS thread, set before NumPy loads OpenBLAS. The wake-word models' small matrix products
# (wakertc/tflite.py, every 80 ms) gain nothing from a second thread, and OpenBLAS's idle
# workers spin after each product: with its default pool the daemon used a whole core while
# listening. An explicit setting in the environment still wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
