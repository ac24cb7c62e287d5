"""Orbax checkpoints: periodic async saves of the train state + data position, restore onto any mesh.

Orbax writes each step into a temporary folder and renames it when complete, so a crash never
leaves a half-written checkpoint behind; `latest_step()` only sees finished ones.

Either layer layout restores into either (t5lite.layout): a checkpoint saved unrolled
(`layers_0`, ...) restores into a scanned model's state and the reverse. The arrays are read in
the saved layout (onto the requested shardings, the stacked axis replicated), then one jitted
conversion puts them into the requested layout and shardings.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp

from t5lite import files
from t5lite.model import stacks as layout


@gin.configurable
class Checkpointer:
  """Saves every `save_period` steps, keeps the newest `keep`, writes asynchronously."""

  def __init__(self, directory: str, save_period: int = 1000, keep: Optional[int] = 3,
               async_save: bool = True):
    self.directory = files.absolute(directory)
    self.save_period = save_period
    # cleanup_tmp_directories: a process killed mid-save leaves a step's temporary folder.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
        cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    return self.save_period > 0 and step % self.save_period == 0

  def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
    """Starts an (async) save of `state` and the JSON `data_state` at `step`."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(data_state))
    return self._manager.save(step, args=args, force=force)

  def restore(self, step: int, abstract_state: Any,
              fill: Optional[dict] = None) -> tuple[Any, dict]:
    """Restores onto the shardings in `abstract_state` (ShapeDtypeStructs), any mesh shape and
    either layer layout (the saved one is converted).

    fill: {field: value} for fields of the state (a flax dataclass) that the checkpoint may lack
    because it was written before they existed (e.g. the non-finite guard's counters)."""
    saved_tree = self._saved_tree(step)
    saved = _shapes(saved_tree)
    missing = {f: v for f, v in (fill or {}).items()
               if not any(k == f or k.startswith(f + "/") for k in saved)}
    in_saved_layout = layout.to_layout(abstract_state, layout.layout_of(saved_tree))
    target = in_saved_layout
    if missing:
      target = {f: getattr(in_saved_layout, f) for f in in_saved_layout.__dataclass_fields__
                if f not in missing}
    check_compatible(saved, target, f"{self.directory}/{step}")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
    state = restored["state"]
    if missing:
      state = in_saved_layout.replace(**dict(state), **missing)
    return _convert_onto(state, abstract_state), dict(restored["data"] or {})

  def saved_shapes(self, step: int) -> dict[str, tuple]:
    """{path: shape} of the arrays stored at `step`."""
    return _shapes(self._saved_tree(step))

  def saved_layout(self, step: int) -> Optional[str]:
    """"scanned" or "unrolled": the layer layout of the state saved at `step`."""
    return layout.layout_of(self._saved_tree(step))

  def _saved_tree(self, step: int) -> Any:
    meta = self._manager.item_metadata(step)["state"]
    if meta is None:
      raise ValueError(f"{self.directory}/{step} has no readable 'state' metadata")
    return getattr(meta, "tree", meta)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _shapes(tree: Any) -> dict[str, tuple]:
  """{path: shape} of an orbax metadata tree's arrays."""
  flat = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(x, dict))[0]
  return {_path_str(p): tuple(leaf.shape) for p, leaf in flat if hasattr(leaf, "shape")}


def _convert_onto(tree: Any, abstract: Any) -> Any:
  """`tree` in the layout and on the shardings of `abstract` (a no-op when already there)."""
  want = layout.layout_of(abstract)
  if layout.layout_of(tree) == want:
    return tree
  shardings = jax.tree.map(lambda a: getattr(a, "sharding", None), abstract)
  if any(s is None for s in jax.tree.leaves(shardings, is_leaf=lambda x: x is None)):
    return layout.to_layout(tree, want)
  return jax.jit(lambda t: layout.to_layout(t, want), out_shardings=shardings)(tree)


def _path_str(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return "/".join(parts)


def check_compatible(saved: dict[str, tuple], abstract_state: Any, where: str) -> None:
  """Raises ValueError naming every parameter whose presence or shape differs."""
  flat = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
  wanted = {_path_str(p): tuple(np.shape(leaf)) for p, leaf in flat}
  problems = []
  # Parameters first: optimizer-state mismatches usually just follow from them.
  for name in sorted(set(wanted) | set(saved), key=lambda n: (not n.startswith("params/"), n)):
    if name not in saved:
      problems.append(f"  {name}: missing from the checkpoint (model expects {wanted[name]})")
    elif name not in wanted:
      problems.append(f"  {name}: in the checkpoint {saved[name]} but not in the model")
    elif wanted[name] != saved[name]:
      problems.append(f"  {name}: checkpoint has shape {saved[name]}, model expects {wanted[name]}")
  if problems:
    shown = problems[:40] + ([f"  ... and {len(problems) - 40} more"] if len(problems) > 40 else [])
    raise ValueError(f"checkpoint {where} does not fit the model ({len(problems)} mismatched "
                     "parameters):\n" + "\n".join(shown))


# ----------------------------------------------------------------------------- params only


def resolve(path: str) -> tuple[str, int]:
  """(checkpoints folder, step) for a t5lite run folder (its latest checkpoint), a run's
  checkpoints/ folder (its latest), or one step's folder (…/checkpoints/<step>)."""
  from etils import epath  # pylint: disable=g-import-not-at-top  (an orbax dependency; gs:// too)
  p = epath.Path(files.absolute(path))  # orbax resolves relative paths against its own cwd
  if not p.exists():
    raise FileNotFoundError(f"checkpoint path {path} does not exist")
  if p.name.isdigit() and (p / "state").exists():
    return os.fspath(p.parent), int(p.name)
  folder = p / "checkpoints" if (p / "checkpoints").is_dir() else p
  steps = sorted(int(c.name) for c in folder.iterdir() if c.name.isdigit() and c.is_dir())
  if not steps:
    raise FileNotFoundError(f"{path}: no finished checkpoint (expected a t5lite run folder, its "
                            "checkpoints/ folder, or a checkpoints/<step> folder)")
  return os.fspath(folder), steps[-1]


def restore_params(path: str, abstract_params: Any, step: Optional[int] = None) -> Any:
  """Only the parameters of a saved TrainState (no optimizer state), onto the shardings in
  `abstract_params` (ShapeDtypeStructs). `path` is anything `resolve` takes; `step` overrides
  the step it picks. Mismatched parameters raise ValueError naming each."""
  folder, latest = resolve(path)
  step = latest if step is None else step
  item_dir = os.path.join(folder, str(step), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  tree = _params_metadata(checkpointer, item_dir)
  saved = {"params": tree["params"]}
  target = layout.to_layout({"params": abstract_params}, layout.layout_of(saved))
  check_compatible(_shapes(saved), target, f"{folder}/{step}")
  restored = checkpointer.restore(item_dir, args=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True))
  return _convert_onto(restored["params"], abstract_params)


def saved_layout(path: str, step: Optional[int] = None) -> Optional[str]:
  """"scanned" or "unrolled": the layer layout of the parameters saved at `path` (anything
  `resolve` takes), read from orbax's metadata."""
  folder, latest = resolve(path)
  item_dir = os.path.join(folder, str(latest if step is None else step), "state")
  return layout.layout_of(_params_metadata(ocp.PyTreeCheckpointer(), item_dir)["params"])


def _params_metadata(checkpointer, item_dir: str) -> dict:
  meta = checkpointer.metadata(item_dir)
  tree = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
  if not isinstance(tree, dict) or "params" not in tree:
    raise ValueError(f"{item_dir} holds no 'params' (not a t5lite TrainState checkpoint)")
  return tree
