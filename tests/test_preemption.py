"""SIGTERM / SIGINT to real training processes: finish the step, save, exit 0; rerunning the
same command resumes there and ends exactly where an uninterrupted run ends.

The data (the token cache) depends only on seed and step, so the interrupted-and-
resumed run's per-step losses equal the uninterrupted run's (multihost_util.reference), and so
do its final parameters (read back from both final checkpoints with orbax).
"""
import signal

import numpy as np
import pytest

import multihost_util as mh

pytestmark = pytest.mark.slow  # every test here starts processes or trains

STEPS = mh.TRAIN_STEPS


def wait_for_first_metrics(run, model_dir):
  """Compilation is done once step 1's metrics are written (after step 2 is dispatched)."""
  metrics = model_dir / "metrics.jsonl"
  run.wait_for(lambda: metrics.exists() and metrics.read_text().strip(), "step 1's metrics")


def assert_same_run_as(model_dir, reference, rtol):
  want, got = mh.losses(reference), mh.losses(model_dir)
  assert sorted(got) == list(range(1, STEPS + 1))
  for step in got:
    assert got[step] == pytest.approx(want[step], rel=rtol), (step, got[step], want[step])
  a, b = mh.saved_params(model_dir, STEPS), mh.saved_params(reference, STEPS)
  assert a.keys() == b.keys() and a
  for name in a:
    if rtol == 0:
      np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    else:
      np.testing.assert_allclose(a[name], b[name], atol=1e-5, rtol=1e-4, err_msg=name)


def test_sigterm_one_process_saves_and_resumes(tmp_path):
  model_dir = tmp_path / "run"
  run = mh.Run(mh.train_args(model_dir), 1, 8, tmp_path, step_delay=0.5,
               name="first")
  wait_for_first_metrics(run, model_dir)
  run.signal(signal.SIGTERM)
  out = run.wait(timeout=120)
  assert f"received signal {int(signal.SIGTERM)}" in out
  saved = mh.checkpoint_steps(model_dir)[-1]
  assert 2 <= saved < STEPS, out
  assert f"stopped at step {saved} on request; checkpoint saved" in out

  out = mh.train(model_dir, tmp_path, processes=1, devices=8, step_delay=0.5,
                 name="second")
  assert f"resumed from {model_dir / 'checkpoints'}/{saved}" in out
  # Same process count, devices and data as the reference: bit-for-bit the same run.
  assert_same_run_as(model_dir, mh.reference(1), rtol=0)


def test_sigterm_two_processes_agree_on_the_step_and_resume(tmp_path):
  """Process 1 gets SIGTERM, process 0 SIGINT (which it forwards as SIGTERM to JAX's preemption
  service); both stop after the same step, save it together and exit 0."""
  model_dir = tmp_path / "run"
  run = mh.Run(mh.train_args(model_dir), 2, 4, tmp_path, step_delay=1.0, name="first")
  wait_for_first_metrics(run, model_dir)
  run.signal(signal.SIGTERM, process=1)
  run.signal(signal.SIGINT, process=0)
  out = run.wait(timeout=180)
  saved = mh.checkpoint_steps(model_dir)[-1]
  assert 2 <= saved < STEPS, out
  logs = [log.read_text() for log in run.logs]
  for log in logs:
    assert f"all processes stop after step {saved} and save a checkpoint" in log, out
  assert f"received signal {int(signal.SIGINT)}; telling all processes" in logs[0], out
  assert f"stopped at step {saved} on request; checkpoint saved" in logs[0], out

  out = mh.train(model_dir, tmp_path, processes=2, devices=4, step_delay=1.0, name="second")
  assert f"resumed from {model_dir / 'checkpoints'}/{saved}" in out
  # Exact data resume: every step's loss equals the uninterrupted 2-process run's.
  assert_same_run_as(model_dir, mh.reference(2), rtol=1e-6)
