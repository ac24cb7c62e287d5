"""Using a trained model: load a run folder onto a mesh (run.py), decode with a KV cache
(greedy, beam, sampling), score and infer on JSON lines (inference.py), and evaluate loss,
accuracy and a task's metrics (evaluation.py)."""
