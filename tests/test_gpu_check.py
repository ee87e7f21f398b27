"""`make gpu-check` as a user runs it, on this GPU-less machine: its CPU path.

The script (bench/gpu_check.py) probes TensorFlow and Horovod in a process of
its own, runs a real `horovodrun -np 2` allreduce (Gloo) whose every rank
compares its result bit for bit with the exact sum, and times the real trainer
(trainers/cifar10.py under horovodrun) at np=1 and np=2, float32 and
mixed_float16, here for a few steps on the session's sample TFRecords. The
test reads its lines as a user does and holds each to what the machine really
is: no GPU, Horovod's CPU build (no NCCL), no NVIDIA driver.
"""

import re
import shutil
import subprocess
import sys

import numpy as np

from bench import gpu_check
from bench import workers
from tests.conftest import ROOT


def _gpu_check(*flags, timeout=600):
  return subprocess.run(
    ["make", "--no-print-directory", "gpu-check", f"ARGS={' '.join(map(str, flags))}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )


def _line(stdout, prefix):
  (line,) = [l for l in stdout.splitlines() if l.startswith(prefix)]
  return line


def test_cpu_path_prints_every_line_and_passes(tfrecords, tmp_path):
  result = _gpu_check(
    "--steps", 8, "--batch-size", 32, "--data-dir", tfrecords / "cifar10", "--work-dir", tmp_path
  )
  out = result.stdout
  assert result.returncode == 0, out + result.stderr[-3000:]
  assert "error:" not in out, out
  # The machine as it is: TensorFlow's CPU build, no GPU, no driver, no NCCL.
  assert re.fullmatch(
    r"GPUs: none seen by TensorFlow 2\.21\.0 \(a CPU-only build\); no NVIDIA driver \(libcuda\)",
    _line(out, "GPUs:"),
  )
  assert gpu_check.driver_cuda_version() is None
  assert _line(out, "NCCL:").startswith("NCCL: not built into this Horovod (the CPU build")
  assert _line(out, "no GPU:").startswith("no GPU: checked the CPU path only (Gloo, np=2)")
  # The allreduce: both ranks of a real horovodrun -np 2 bitwise exact, on CPU tensors.
  allreduce = _line(out, "allreduce:")
  assert allreduce.startswith("allreduce: bitwise exact on all 2 ranks of horovodrun -np 2: ")
  assert f"tensor of {2**22 + 3:,} elements (CPU tensors, Gloo), results on CPU:0" in allreduce
  # Training: the trainer's own img/s at np=1 and np=2, then mixed_float16 at np=2.
  speed = re.fullmatch(
    r"speed: cifar10_tutorial, batch 32/worker, 8 steps: np=1 (\d+) img/s, np=2 (\d+) img/s: "
    r"scaling efficiency (\d+)% \(CPU: the 2 processes share this machine's \d+ cores\)",
    _line(out, "speed:"),
  )
  assert speed, out
  one, two, efficiency = map(int, speed.groups())
  assert one > 0 and two > 0 and abs(efficiency - 100 * two / (2 * one)) <= 1
  mixed = re.fullmatch(
    r"mixed precision: cifar10_tutorial, batch 32/worker, 8 steps, np=2: --precision "
    r"mixed_float16 (\d+) img/s vs float32 (\d+) img/s: speed-up ([\d.]+)x \(CPU: .*\)",
    _line(out, "mixed precision:"),
  )
  assert mixed and int(mixed.group(2)) == two, out
  assert abs(float(mixed.group(3)) - int(mixed.group(1)) / two) < 0.01
  # Each run is a real model dir of the trainer's.
  assert (tmp_path / "run-cifar10_tutorial" / "config.json").is_file()
  verdict = out.splitlines()[-1]
  assert verdict == (
    "verdict: PASS on the CPU path only; checked: allreduce bitwise exact at np=2; training "
    "at np=1 and np=2; mixed_float16 training; not checked: GPUs, NCCL, GPU allreduce, GPU "
    "speed and mixed precision (no GPU)"
  )


def test_gpus_asked_for_but_missing_is_an_error_naming_the_fix_and_exit_3(tfrecords, tmp_path):
  result = subprocess.run(
    [sys.executable, "-m", "bench.gpu_check", "--gpus", "2", "--steps", "8", "--batch-size", "32"]
    + ["--data-dir", str(tfrecords / "cifar10"), "--work-dir", str(tmp_path)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert result.returncode == gpu_check.MISSING, result.stdout + result.stderr[-2000:]
  (error,) = [l for l in result.stdout.splitlines() if l.startswith("error:")]
  assert error.startswith("error: no GPU: TensorFlow sees none (a CPU-only TensorFlow): install ")
  assert "tensorflow[and-cuda]" in error and "nvidia.com/gpu" in error
  assert result.stdout.splitlines()[-1].startswith("verdict: NOT READY (1 missing")


def test_a_failed_run_is_an_error_line_with_its_cause_and_exit_1(tfrecords, tmp_path):
  """A real failure: a training shard cut in half. The trainer's own error reaches the report."""
  data = tmp_path / "cifar10"
  shutil.copytree(tfrecords / "cifar10", data)
  shard = sorted(data.glob("train-*.tfrecord"))[0]
  shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
  result = subprocess.run(
    [sys.executable, "-m", "bench.gpu_check", "--steps", "8", "--batch-size", "32"]
    + ["--data-dir", str(data), "--work-dir", str(tmp_path / "work")],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  out = result.stdout.splitlines()
  assert result.returncode == gpu_check.FAILED, result.stdout + result.stderr[-2000:]
  (error,) = [l for l in out if l.startswith("error:")]
  assert error.startswith("error: trainers/cifar10.py --precision float32 at np=1 failed: ")
  assert shard.name in error and error.endswith("the file is truncated")
  assert any(l.startswith("allreduce: bitwise exact on all 2 ranks") for l in out)
  assert not [l for l in out if l.startswith(("speed:", "mixed precision:"))]
  assert out[-1].startswith(
    "verdict: FAIL (trainers/cifar10.py --precision float32 at np=1 failed); checked: "
    "allreduce bitwise exact at np=2; not checked: GPUs, NCCL, GPU allreduce, GPU speed and "
    "mixed precision (no GPU); training at np=2 and mixed precision (np=1 failed)"
  )


def test_known_tensor_sums_exactly_in_any_order():
  """The allreduce's expected value is exact: float32 sums in any order give the same bits."""
  parts = [workers.known_tensor(r, 10_001) for r in range(8)]
  exact = sum(p.astype(np.float64) for p in parts).astype(np.float32)
  for order in ([0, 1, 2, 3, 4, 5, 6, 7], [7, 3, 5, 1, 6, 0, 2, 4]):
    acc = np.zeros_like(parts[0])
    for r in order:
      acc = acc + parts[r]
    assert acc.tobytes() == exact.tobytes()
  assert not np.array_equal(parts[0], parts[1])  # each rank's part is its own


def test_version_codes_and_bad_flags(tfrecords):
  assert gpu_check.nccl_text(22203) == "2.22.3" and gpu_check.nccl_text(2708) == "2.7.8"
  assert gpu_check.cuda_text(12040) == "12.4" and gpu_check.cuda_text(11080) == "11.8"

  def check(data_dir):
    return subprocess.run(
      [sys.executable, "-m", "bench.gpu_check", "--data-dir", data_dir],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=60,
      check=False,
    )

  mnist = check(tfrecords / "mnist")
  assert mnist.returncode == gpu_check.USAGE
  assert "mnist: holds mnist data (its metadata.json), not cifar10" in mnist.stderr
  result = check("/nonexistent")
  assert result.returncode == gpu_check.USAGE
  assert "--data-dir /nonexistent: no metadata.json" in result.stderr.splitlines()[-1]


def test_each_missing_gpu_piece_gets_its_own_error_line(capsys):
  """The GPU path's error lines, from a probe result as a one-GPU machine would give it.

  Nothing here has run on a GPU: the probe's dict is written by hand in the shape
  bench/workers.py `devices` returns (this machine's own probe is checked above).
  """
  found = {
    "tensorflow": "2.21.0",
    "cuda_build": True,
    "cuda": "12.5.1",
    "cudnn": "9",
    "gpus": [{"name": "NVIDIA A100-SXM4-40GB", "compute_capability": [8, 0]}],
    "nccl_code": 0,
    "gloo": True,
  }
  report = gpu_check.Report()
  assert gpu_check.check_devices(report, found, 11040, 0) == 1
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == (
    "GPUs: 1 seen by TensorFlow 2.21.0 (CUDA 12.5.1, cuDNN 9): GPU 0 NVIDIA A100-SXM4-40GB "
    "(compute capability 8.0); the driver supports CUDA 11.4"
  )
  errors = [l for l in lines if l.startswith("error:")]
  assert [e.split(":")[1].strip() for e in errors] == [
    "driver too old",
    "NCCL not built into Horovod (hvd.nccl_built() = 0), so GPU tensors are reduced through "
    "host memory",
    "one GPU only",
  ]
  assert len(report.missing) == 2 and report.partial == "on one GPU only"
  assert "upgrade the NVIDIA driver" in errors[0]
  assert "HOROVOD_GPU_OPERATIONS=NCCL" in errors[1]
  assert "2 or more GPUs" in errors[2]
  assert not [l for l in lines if l.startswith("no GPU")]
  assert gpu_check.verdict(report) == gpu_check.MISSING
  # With NCCL and two GPUs on a CUDA 12.4 driver: no error, the NCCL line names the version.
  report = gpu_check.Report()
  two = dict(found, gpus=found["gpus"] * 2, nccl_code=22203)
  assert gpu_check.check_devices(report, two, 12040, 2) == 2
  out = capsys.readouterr().out
  assert (
    "error:" not in out and "NCCL: 2.22.3 (built into Horovod: hvd.nccl_built() = 22203)" in out
  )
  assert report.checked == ["2 GPUs, NCCL 2.22.3"] and not report.missing
  # One GPU with all it needs: the error line says what cannot be checked, and it passes.
  report = gpu_check.Report()
  assert gpu_check.check_devices(report, dict(found, nccl_code=22203), 12040, 0) == 1
  assert gpu_check.verdict(report) == gpu_check.PASSED
  out = capsys.readouterr().out.splitlines()
  assert out[-1].startswith("verdict: PASS on one GPU only; checked: 1 GPU, NCCL 2.22.3; ")
  assert [l for l in out if l.startswith("error:")] == [
    "error: one GPU only: the multi-GPU allreduce (NCCL between GPUs) and scaling are not "
    "checked: run on a machine or pod with 2 or more GPUs (k8s/jobs/gpu-check requests 2)"
  ]
