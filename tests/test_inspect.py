"""`t5lite inspect` and check_lengths on the demo tasks (short lengths and few examples: fast)."""
import json

import gin
import pytest

from t5lite import main
from t5lite.data.tasks import registry as tasks

STATS_KEYS = {"num_examples", "inputs_length", "targets_length", "noise_density",
              "spans_per_example", "mean_span_length", "packing_efficiency"}


def run(capsys, *argv):
  """`t5lite inspect ARGV` as the command runs it: (exit code, stdout, stderr)."""
  gin.clear_config()
  with pytest.raises(SystemExit) as e:
    main.run_with_args(["inspect", *argv])
  out, err = capsys.readouterr()
  return e.value.code, out, err


@pytest.mark.slow
def test_span_corruption_text_and_json(capsys):
  code, out, _ = run(capsys, "demo_span_corruption", "--num_examples", "1", "--stats_examples",
                     "24", "--inputs_length", "128")
  assert code == 0
  assert "<extra_id_0>" in out and "<extra_id_1>" in out
  assert "noise density" in out and "packing efficiency" in out
  code, out, _ = run(capsys, "demo_span_corruption", "--num_examples", "1", "--stats_examples",
                     "24", "--json")
  assert code == 0
  result = json.loads(out)
  assert result["task_feature_lengths"] == {"inputs": 512, "targets": 114}  # 114: required
  assert result["required_targets_length"] == 114
  stats = result["stats"]
  assert STATS_KEYS <= set(stats)
  assert stats["num_examples"] == 24
  assert stats["noise_density"] == pytest.approx(0.15, abs=0.01)
  assert stats["mean_span_length"] == pytest.approx(3.0, abs=0.3)
  assert 500 <= stats["inputs_length"]["mean"] <= stats["inputs_length"]["max"] <= 512
  assert stats["targets_length"]["max"] <= 114
  assert 0.9 < stats["packing_efficiency"]["inputs"] <= 1.0
  assert "<extra_id_0>" in result["examples"][0]["inputs"]


def test_bart_denoising_shows_masks(capsys):
  code, out, _ = run(capsys, "demo_bart_denoising", "--num_examples", "2", "--stats_examples",
                     "16", "--inputs_length", "128", "--json")
  assert code == 0
  result = json.loads(out)
  assert result["task_feature_lengths"]["targets"] == 128  # BART: targets = the clean chunk
  assert any("<mask>" in ex["inputs"] for ex in result["examples"])
  assert not any("<mask>" in ex["targets"] for ex in result["examples"])
  stats = result["stats"]
  assert 0.15 < stats["noise_density"] < 0.45  # 30% of words, counted in tokens
  assert stats["spans_per_example"] > 1


@pytest.mark.slow
def test_ul2_mixture_by_task(capsys):
  code, out, _ = run(capsys, "demo_ul2", "--num_examples", "3", "--stats_examples", "28",
                     "--inputs_length", "128")
  assert code == 0
  assert "(mixture; ul2_denoiser, ul2_prefix_lm)" in out
  assert "<extra_id_0>" in out
  assert "[NLU]" in out or "[NLG]" in out or "[S2S]" in out
  assert "demo_ul2_x_mean3_rate50 (rate 0.133)" in out


def test_unknown_name_lists_registered(capsys):
  code, out, err = run(capsys, "no_such_task")
  assert code == 2 and not out
  assert "unknown task or mixture 'no_such_task'" in err
  assert "demo_span_corruption" in err and "demo_ul2" in err


def test_check_lengths():
  assert tasks.check_lengths("demo_span_corruption", {"inputs": 512, "targets": 114}) == 114
  assert tasks.check_lengths("demo_bart_denoising", {"inputs": 128, "targets": 128}) == 128
  assert tasks.check_lengths("demo_ul2", {"inputs": 128, "targets": 128}) == 123
  with pytest.raises(ValueError, match=r"demo_ul2_x_mean3_rate50 needs 507.*'targets': 507"):
    tasks.check_lengths("demo_ul2", {"inputs": 512, "targets": 114})
