"""Metrics to TensorBoard (tensorboard.py), to MODEL_DIR/metrics.jsonl, to a progress bar, and a
loss-curve PNG."""
from __future__ import annotations

import json
import os
import sys
from typing import Optional

import tqdm

from t5lite import extras, files
from t5lite.store.run_dir import RunDir
from t5lite.store.tensorboard import EventWriter


class MetricsWriter:
  """Only the chief process (enabled=True) writes; the others keep a silent no-op writer."""

  def __init__(self, run_dir: RunDir, enabled: bool = True):
    self.run_dir = run_dir
    self.enabled = enabled
    self._tb = {}
    self._bar: Optional[tqdm.tqdm] = None
    self._history: list[tuple[int, float]] = []
    self._eval_history: list[tuple[int, float]] = []

  def _events(self, prefix: str) -> EventWriter:
    if prefix not in self._tb:
      self._tb[prefix] = EventWriter(self.run_dir.tb(prefix))
    return self._tb[prefix]

  def drop_after(self, step: int) -> None:
    """Drops metrics.jsonl records of steps after `step` (a resumed run logs them again)."""
    records = read_metrics(self.run_dir.metrics)
    keep = [r for r in records if r.get("step", 0) <= step]
    if len(keep) < len(records):
      files.write_jsonl(self.run_dir.metrics, keep)

  def progress(self, start: int, total: int):
    self._bar = tqdm.tqdm(total=total, initial=start, desc="train", unit="step",
                          disable=not self.enabled, file=sys.stderr, dynamic_ncols=True)
    return self._bar

  def write(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
    if not self.enabled or not values:
      return
    self._events(prefix).scalars(step, values)
    record = {"step": step, "split": prefix, **{k: float(v) for k, v in values.items()}}
    files.append_text(self.run_dir.metrics, json.dumps(record) + "\n")
    if "loss" in values:
      (self._history if prefix == "train" else self._eval_history).append((step, values["loss"]))
    if self._bar is not None:
      shown = {k: f"{values[k]:.4g}" for k in ("loss", "accuracy", "examples_per_s", "mfu")
               if k in values}
      if prefix == "train":
        self._bar.set_postfix(shown, refresh=False)
      else:
        self._bar.write(f"step {step} {prefix}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))

  def finish(self) -> None:
    if not self.enabled:
      return
    for split, history in (("train", self._history), ("eval", self._eval_history)):
      if history:
        (s0, l0), (s1, l1) = history[0], history[-1]
        print(f"t5lite: {split} loss {l0:.4f} at step {s0} -> {l1:.4f} at step {s1}", flush=True)
    for w in self._tb.values():
      w.close()
    self._tb.clear()
    write_loss_curve(self.run_dir.metrics, self.run_dir.loss_png)


def read_metrics(path: str) -> list[dict]:
  if not files.exists(path):
    return []
  return [json.loads(line) for line in files.read_text(path).splitlines() if line.strip()]


def write_loss_curve(metrics_path: str, png_path: str) -> bool:
  """Plots train (and eval) loss against step from metrics.jsonl; False if there is none, or
  matplotlib (the `viz` extra) is not installed (said once)."""
  if not extras.installed("matplotlib"):
    print(f"t5lite: {os.path.basename(png_path)} not drawn: matplotlib is not installed "
          "(pip install 't5lite[viz]'); metrics.jsonl and tb/ hold the same curves", flush=True)
    return False
  records = read_metrics(metrics_path)
  curves = {}
  for r in records:
    if "loss" in r:
      curves.setdefault(r.get("split", "train"), {})[r["step"]] = r["loss"]
  if not curves:
    return False
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4))
  for split, points in sorted(curves.items()):
    steps = sorted(points)
    ax.plot(steps, [points[s] for s in steps], marker="." if len(steps) < 50 else None,
            label=split)
  ax.set_xlabel("step")
  ax.set_ylabel("loss (per target token)")
  ax.set_title(os.path.basename(os.path.dirname(os.path.abspath(metrics_path))) or "loss")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  with files.open_file(png_path, "wb") as f:
    fig.savefig(f, format="png", dpi=100)
  plt.close(fig)
  return True
