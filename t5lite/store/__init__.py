"""What a run leaves on disk: the run folder's layout (run_dir.py), orbax checkpoints, the
run lock, and its metrics (metrics.jsonl, TensorBoard event files written without TensorFlow, the
loss curve)."""
