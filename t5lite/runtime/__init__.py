"""What a process runs on, below the model: the device mesh and THE logical-axis rules table
(partitioning.py), emulated CPU devices, jax.distributed and device peaks (devices.py), and the one
switch for CPU-only tricks (backend.py)."""
