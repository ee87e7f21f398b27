"""The run directory at its edges (issue 23): nothing lost, every phase stops in one line.

Checkpoints are found by listing what is there (no state file needed), a
damaged latest one falls back to the newest intact one, one of another model is
a mismatch (never "delete it"); SIGTERM and Ctrl-C stop every phase after the
loop with one line and status 75, leaving nothing half-written; entries of the
model dir that are not the run's stay, and are named at start-up.

One real run (mnist, tiny recipe, a few steps, early stopping so best/ exists)
is trained once; each test works on its own copy. Every other run is a real
trainer process, signals are real signals.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from tests.conftest import BIN
from tests.conftest import ROOT
from tests.conftest import run_trainer
from tests.test_run_lifecycle import one_line_error

STEPS = 6
QUIET = ["--summary-every", 0, "--histogram-every", 0, "--log-every", 2]
TINY = ["--recipe", "tiny", "--batch-size", 16, "--eval-every", 2, "--checkpoint-every", 2]
TINY += ["--early-stopping-patience", 100, "--keep-checkpoints", 10]


@pytest.fixture(scope="module")
def trained(tfrecords, tmp_path_factory):
  """A finished train_and_eval run: checkpoints 2, 4, 6, best/, metrics.json, export/."""
  run = tmp_path_factory.mktemp("trained") / "run"
  flags = ["--data-dir", tfrecords / "mnist", "--model-dir", run, "--max-steps", STEPS]
  run_trainer("mnist", flags + TINY + QUIET)
  return run


@pytest.fixture
def run(trained, tmp_path):
  """A copy of the trained run, for a test to change."""
  copy = tmp_path / "run"
  shutil.copytree(trained, copy)
  return copy


def _files(d):
  return sorted(p.name for p in d.iterdir())


def _step(path):
  return int(re.search(r"ckpt-(\d+)", path).group(1))


def _evaluated(stdout):
  return re.search(r"evaluating (\S+)", stdout).group(1)


# --- checkpoints: found by listing, damage falls back, a mismatch is named --------


def test_checkpoints_are_found_without_the_state_files(run):
  best = _files(run / "best")
  (run / "checkpoints" / "checkpoint").unlink()
  (run / "best" / "checkpoint").unlink()
  before = _files(run / "checkpoints")
  # Eval takes the best checkpoint, not the latest, state file or not.
  result = run_trainer("mnist", ["--mode", "eval", "--model-dir", run])
  assert _evaluated(result.stdout).startswith(str(run / "best" / "ckpt-")), result.stdout
  assert f"ckpt-{_step(_evaluated(result.stdout))}.index" in best
  # A later write cut short by a kill -9 (data, no index): named, kept, not resumed from.
  cut = run / "checkpoints" / "ckpt-20.data-00000-of-00001"
  shutil.copy(run / "checkpoints" / f"ckpt-{STEPS}.data-00000-of-00001", cut)
  before.append(cut.name)
  # Training resumes from the newest intact one, and deletes none of the others.
  result = run_trainer("mnist", ["--model-dir", run, "--max-steps", STEPS + 2, "--no-export"])
  assert f"ckpt-{STEPS} at step {STEPS}" in result.stdout, result.stdout
  assert f"ckpt-20 is damaged (incomplete: only {cut.name})" in result.stdout
  assert f"training steps {STEPS}->{STEPS + 2}" in result.stdout
  after = _files(run / "checkpoints")
  assert set(before) - {"checkpoint"} <= set(after), (before, after)
  assert f"ckpt-{STEPS + 2}.index" in after


def _damage(run, step):
  data = sorted((run / "checkpoints").glob(f"ckpt-{step}.data-*"))[0]
  data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
  return data


def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(run):
  damaged = _damage(run, STEPS)
  cut = damaged.read_bytes()
  shutil.rmtree(run / "best")  # eval and export then take the latest
  for mode in ("eval", "export"):
    result = run_trainer("mnist", ["--mode", mode, "--model-dir", run])
    lines = [l for l in result.stdout.splitlines() if "is damaged" in l]
    assert len(lines) == 1 and f"ckpt-{STEPS} is damaged" in lines[0], result.stdout
    assert f"restored {run / 'checkpoints' / f'ckpt-{STEPS - 2}'} instead" in lines[0]
    assert "delete" not in result.stdout + result.stderr
  assert json.loads((run / "metrics.json").read_text())["step"] == STEPS - 2
  # Training resumes from the intact one; the damaged files are set aside, not overwritten.
  result = run_trainer("mnist", ["--model-dir", run, "--max-steps", STEPS, "--no-export"])
  assert f"at step {STEPS - 2}" in result.stdout and "is damaged" in result.stdout
  aside = damaged.parent / (damaged.name + ".damaged")
  assert aside.read_bytes() == cut
  assert (run / "checkpoints" / f"ckpt-{STEPS}.index").exists()
  # Every checkpoint damaged: one line, no advice to delete.
  for step in range(2, STEPS + 1, 2):
    _damage(run, step)
  result = run_trainer("mnist", ["--model-dir", run, "--max-steps", STEPS + 2], check=False)
  line = one_line_error(result, "is damaged", "no intact checkpoint", absent=["delete"])
  assert "from a backup" in line


def test_a_checkpoint_of_another_model_is_a_mismatch_not_damage(run, tfrecords, tmp_path):
  other = tmp_path / "other"  # cifar10 images have 3 channels: conv1's kernel differs
  flags = ["--data-dir", tfrecords / "cifar10", "--model-dir", other, "--max-steps", 2]
  run_trainer("cifar10", flags + TINY + QUIET + ["--no-export"])
  shutil.rmtree(run / "checkpoints")
  shutil.rmtree(run / "best")
  shutil.copytree(other / "checkpoints", run / "checkpoints")
  before = _files(run / "checkpoints")
  for mode in ("eval", "train"):
    result = run_trainer("mnist", ["--mode", mode, "--model-dir", run], check=False)
    line = one_line_error(result, "does not match", "conv1", absent=["delete", "damaged"])
    assert "[3, 3, 3, 8] in it, float32 [3, 3, 1, 8] in this run" in line, line
  assert _files(run / "checkpoints") == before


# --- stops after the loop: one line, status 75, nothing half-written ---------------


def _start(flags, log):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PATH=f"{BIN}:{os.environ.get('PATH', '')}")
  out = open(log, "w")  # noqa: SIM115 (closed by _stop)
  proc = subprocess.Popen(
    [str(ROOT / "trainers" / "mnist.py")] + [str(f) for f in flags],
    cwd=ROOT,
    env=env,
    stdout=out,
    stderr=subprocess.STDOUT,
  )
  proc.log, proc.out = log, out
  return proc


def _stop(proc, signum, after=None, timeout=300):
  """Sends `signum` once the output has `after` (a regex; None: at once); returns (code, output)."""
  deadline = time.time() + timeout
  while after and not re.search(after, open(proc.log).read()):
    if proc.poll() is not None or time.time() > deadline:
      pytest.fail(f"no {after!r} before the end:\n{open(proc.log).read()[-3000:]}")
    time.sleep(0.05)
  proc.send_signal(signum)
  proc.wait(timeout=timeout)
  proc.out.close()
  return proc.returncode, open(proc.log).read()


def _one_stop_line(code, output, signame, phase):
  assert code == 75, output[-3000:]
  assert "Traceback" not in output, output[-3000:]
  lines = [l for l in output.splitlines() if l.startswith("received ")]
  assert lines == [l for l in lines if f"received {signame} during {phase}: stopped; " in l]
  assert len(lines) == 1, output[-3000:]
  return lines[0]


def test_sigterm_in_the_final_evaluation_is_one_line_and_leaves_no_half_file(run, tmp_path):
  metrics = (run / "metrics.json").read_bytes()
  flags = ["--model-dir", run, "--max-steps", STEPS + 2, "--eval-split", "train"]
  proc = _start(flags, tmp_path / "log")
  code, output = _stop(proc, signal.SIGTERM, after=r"evaluating the weights of step")
  line = _one_stop_line(code, output, "SIGTERM", "the final evaluation")
  assert f"trained to step {STEPS + 2}" in line and "rerun" in line
  assert (run / "metrics.json").read_bytes() == metrics
  assert not [p for p in run.iterdir() if p.name.endswith((".tmp", ".partial", ".old"))]
  assert (run / "checkpoints" / f"ckpt-{STEPS + 2}.index").exists()


def test_ctrl_c_in_eval_and_sigterm_in_export_keep_the_old_files(run, tmp_path):
  metrics = (run / "metrics.json").read_bytes()
  model = (run / "export" / "saved_model.pb").read_bytes()
  proc = _start(["--mode", "eval", "--model-dir", run, "--eval-split", "train"], tmp_path / "e")
  code, output = _stop(proc, signal.SIGINT, after=r"evaluating ")
  _one_stop_line(code, output, "SIGINT", "the evaluation")
  assert (run / "metrics.json").read_bytes() == metrics
  # What a kill -9 in an earlier export left: cleaned at start-up, with a line.
  (run / "export.partial" / "variables").mkdir(parents=True)
  proc = _start(["--mode", "export", "--model-dir", run], tmp_path / "x")
  code, output = _stop(proc, signal.SIGTERM, after=r"exporting ")
  assert f"{run / 'export.partial'}: removed, left half-written" in output
  line = _one_stop_line(code, output, "SIGTERM", "the export")
  assert f"{run / 'export'} is as it was" in line
  assert (run / "export" / "saved_model.pb").read_bytes() == model
  assert sorted(p.name for p in run.iterdir() if p.name.startswith("export")) == ["export"]


def test_ctrl_c_at_start_up_is_one_line(run, tmp_path):
  before = _files(run / "checkpoints")
  proc = _start(["--model-dir", run, "--max-steps", STEPS + 2], tmp_path / "log")
  time.sleep(1)  # the handler is in place at once; TensorFlow is still being imported
  code, output = _stop(proc, signal.SIGINT)
  _one_stop_line(code, output, "SIGINT", "start-up")
  assert _files(run / "checkpoints") == before


# --- what is not the run's stays; model-dir problems show at start-up --------------


@pytest.mark.parametrize(
  "entry, make, needle",
  [
    ("export", lambda p: p.write_text("my notes"), "is a file, not a directory"),
    ("checkpoints", lambda p: p.write_text("my notes"), "is a file, not a directory"),
    ("metrics.json", lambda p: p.mkdir(), "is a directory, not a file"),
    ("export", lambda p: (p.mkdir(), (p / "notes.txt").write_text("x")), "no saved_model.pb"),
  ],
  ids=["export-file", "checkpoints-file", "metrics-dir", "export-not-ours"],
)
def test_an_entry_that_is_not_the_runs_is_named_at_start_up_and_kept(
  tfrecords, tmp_path, entry, make, needle
):
  run = tmp_path / "new"
  run.mkdir()
  make(run / entry)
  before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
  flags = ["--data-dir", tfrecords / "mnist", "--model-dir", run, "--max-steps", 2]
  result = run_trainer("mnist", flags + TINY + QUIET, check=False)
  one_line_error(result, run / entry, needle, "move it away")
  assert "step 2/2" not in result.stdout
  assert sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.name != ".lock") == before


def test_overwrite_deletes_only_what_the_run_wrote(run, tfrecords):
  shutil.rmtree(run / "export")
  (run / "export").write_text("my notes")
  flags = ["--data-dir", tfrecords / "mnist", "--model-dir", run, "--overwrite", "--max-steps", 2]
  run_trainer("mnist", flags + TINY + QUIET + ["--no-export"])
  assert (run / "export").read_text() == "my notes"
  assert _files(run / "checkpoints") == ["checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index"]
