"""One command that checks a user's GPUs (issue 22): `make gpu-check`, `python -m bench.gpu_check`.

What a user runs first on a GPU machine, or once as the Kubernetes Job
k8s/jobs/gpu-check with the GPU image. Everything is measured on whole
processes, run the way users run them, through bench/'s own launchers
(bench/speed.py): a probe process (bench/workers.py `devices`), a
`horovodrun -np N` allreduce (bench/workers.py `allreduce`) and the real
trainer, trainers/cifar10.py, under `horovodrun`. It prints one line for each of:

  GPUs              the GPUs TensorFlow sees and their compute capability
                    (tf.config.experimental.get_device_details), and the CUDA
                    version the driver supports (libcuda's cuDriverGetVersion);
  NCCL              the NCCL version Horovod was compiled with (hvd.nccl_built());
  allreduce         a Sum allreduce of a known float32 tensor across
                    `horovodrun -np N`, N = the GPUs found, every rank's result
                    compared bit for bit with the exact sum;
  speed             the CIFAR-10 tutorial recipe (cifar10_tutorial) for --steps
                    steps (200; 40 on the CPU path) at np=1 and np=N: img/s (the trainer's own log lines,
                    the first interval, which holds the tracing, left out) and
                    the scaling efficiency, img/s at N / (N x img/s at 1);
  mixed precision   the same at np=N with --precision mixed_float16: the speed-up;

then a one-line verdict. A missing piece gets its own `error:` line that names
the fix: no GPU, NCCL not built into Horovod, a driver older than CUDA 12, one
GPU only. Without a GPU and without an NVIDIA driver (this project's CI), it
checks the CPU path (Gloo, np=2) and says so in a `no GPU:` line.

Data: --data-dir (the Beam job's output for cifar10), or else sample data that
the check generates and converts with the real Beam job in its work directory.
"""

import argparse
import ctypes
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile

from bench import speed

RECIPE = "cifar10_tutorial"
CPU_NP = 2
# Steps per run: what a GPU does in seconds; on the CPU path the runs only have
# to work (its figures say nothing of a GPU), and mixed_float16 is emulated there.
GPU_STEPS, CPU_STEPS = 200, 40
CUDA_NEEDED = 12000  # cuDriverGetVersion's code for CUDA 12.0, what TensorFlow 2.21's CUDA 12 needs
PASSED, FAILED, USAGE, MISSING = 0, 1, 2, 3
EXIT_CODES = f"""exit codes:
  {PASSED}  every check that could run passed (on a machine without a GPU: the CPU path;
     with one GPU: all but the multi-GPU allreduce and scaling)
  {FAILED}  a check failed: an allreduce result not bitwise exact, or a run that crashed
  {USAGE}  bad flags or --data-dir
  {MISSING}  a GPU machine that lacks something the GPU path needs: TensorFlow sees no
     GPU although an NVIDIA driver is loaded (or --gpus asked for one), fewer GPUs
     than --gpus, NCCL not built into Horovod, a driver older than CUDA 12
"""


class Report:
  """The lines printed as the checks go, and what the verdict sums up."""

  def __init__(self):
    self.failed, self.missing, self.checked, self.not_checked = [], [], [], []
    self.partial = None  # "on the CPU path only", "on one GPU only": what a PASS covers

  def line(self, text):
    print(text, flush=True)

  def fail(self, what, detail=""):
    self.failed.append(what)
    self.line(f"error: {what}" + (f": {detail}" if detail else ""))

  def lack(self, what, fix):
    self.missing.append(what)
    self.line(f"error: {what}: {fix}")

  def limit(self, what, fix, not_checked, partial):
    """An error line for what this machine cannot show, without failing the check."""
    self.line(f"error: {what}: {fix}")
    self.not_checked.append(not_checked)
    self.partial = partial


def _cause(failure):
  """The line that says why a process failed, from bench/speed.py's message (command + output tails).

  The program's own `error:` line first (under horovodrun, without its `[rank]<stderr>:`
  prefix), then an exception's last line, then the output's last line.
  """
  lines = [
    re.sub(r"^\[[\d,]+\]<std(?:out|err)>:", "", l).strip() for l in str(failure).splitlines()
  ]
  lines = [l for l in lines if l and not l.startswith("failed: ")]
  own = [l.removeprefix("error: ") for l in lines if l.startswith("error: ")]
  raised = [
    l for l in lines if re.match(r"[\w.]*(Error|Exception)\b", l) and "Horovod detected" not in l
  ]
  return (own or raised or lines or [""])[-1]


def driver_cuda_version():
  """The CUDA version the NVIDIA driver supports (e.g. 12040 for 12.4), or None without libcuda."""
  try:
    libcuda = ctypes.CDLL("libcuda.so.1")
  except OSError:
    return None
  version = ctypes.c_int(0)
  # Needs no cuInit and no GPU context; 0 is CUDA_SUCCESS.
  if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
    return None
  return version.value


def cuda_text(code):
  return f"{code // 1000}.{code % 1000 // 10}"


def nccl_text(code):
  """NCCL_VERSION_CODE as a version: 22203 -> 2.22.3 (NCCL >= 2.9), 2708 -> 2.7.8 (older)."""
  if code >= 10000:
    return f"{code // 10000}.{code % 10000 // 100}.{code % 100}"
  return f"{code // 1000}.{code % 1000 // 100}.{code % 100}"


def check_devices(report, found, driver, expect):
  """The GPUs and NCCL lines; returns the number of GPUs the rest of the check uses (0: CPU path)."""
  gpus = found["gpus"]
  build = (
    f"CUDA {found['cuda']}, cuDNN {found['cudnn']}" if found["cuda_build"] else "a CPU-only build"
  )
  driver_note = (
    f"; the driver supports CUDA {cuda_text(driver)}" if driver else "; no NVIDIA driver (libcuda)"
  )
  listed = ", ".join(
    f"GPU {i} {g['name']} (compute capability {'.'.join(map(str, g['compute_capability']))})"
    for i, g in enumerate(gpus)
  )
  report.line(
    f"GPUs: {len(gpus) or 'none'} seen by TensorFlow {found['tensorflow']} ({build})"
    + (f": {listed}" if gpus else "")
    + driver_note
  )
  if driver and driver < CUDA_NEEDED:
    report.lack(
      f"driver too old: it supports CUDA {cuda_text(driver)}, TensorFlow's CUDA 12 libraries need 12.0",
      "upgrade the NVIDIA driver to one for CUDA 12.5 or newer (R555+; R525+ runs CUDA 12 "
      "through minor version compatibility)",
    )
  if not gpus and (driver or expect):
    why = "a CPU-only TensorFlow" if not found["cuda_build"] else "no GPU visible to this process"
    report.lack(
      f"no GPU: TensorFlow sees none ({why})",
      "install the GPU build (tensorflow[and-cuda], the image of docker/Dockerfile), check "
      "`nvidia-smi`, and on Kubernetes request nvidia.com/gpu (k8s/jobs/gpu-check)",
    )
  elif 0 < len(gpus) < expect:
    report.lack(f"{len(gpus)} GPUs, --gpus asked for {expect}", "run where that many are visible")
  code = found["nccl_code"]
  if code:
    report.line(f"NCCL: {nccl_text(code)} (built into Horovod: hvd.nccl_built() = {code})")
  elif gpus:
    report.lack(
      "NCCL not built into Horovod (hvd.nccl_built() = 0), so GPU tensors are reduced through "
      "host memory",
      "reinstall Horovod with HOROVOD_GPU_OPERATIONS=NCCL (the GPU image, docker/Dockerfile, "
      "builds it so)",
    )
  else:
    why = "the GPU image's build has it" if driver or expect else "not needed on the CPU path"
    report.line(f"NCCL: not built into this Horovod (the CPU build: Gloo only; {why})")
  if len(gpus) == 1:
    report.limit(
      "one GPU only: the multi-GPU allreduce (NCCL between GPUs) and scaling are not checked",
      "run on a machine or pod with 2 or more GPUs (k8s/jobs/gpu-check requests 2)",
      "the multi-GPU allreduce and scaling (one GPU)",
      "on one GPU only",
    )
  if not gpus and report.missing:
    report.not_checked.append("the allreduce and training (no GPU where one was expected)")
  elif not gpus:
    report.line(
      f"no GPU: checked the CPU path only (Gloo, np={CPU_NP}); GPU listing, NCCL, the GPU "
      "allreduce, GPU speed and mixed precision on a GPU are not checked"
    )
    report.not_checked.append("GPUs, NCCL, GPU allreduce, GPU speed and mixed precision (no GPU)")
    report.partial = "on the CPU path only"
  elif code:
    report.checked.append(f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''}, NCCL {nccl_text(code)}")
  return len(gpus)


def check_allreduce(report, np_, gpus, nccl):
  try:
    ranks = speed._bench(["allreduce"], np_=np_)
  except SystemExit as e:
    report.fail(f"allreduce at np={np_} did not run", _cause(e))
    print(str(e), file=sys.stderr)
    return
  bad = [r for r in ranks if r["mismatches"]]
  where = ("GPU tensors, NCCL" if nccl else "GPU tensors, no NCCL") if gpus else "CPU tensors, Gloo"
  what = f"a Sum of a known float32 tensor of {ranks[0]['elements']:,} elements ({where})"
  if len(ranks) != np_ or {r["size"] for r in ranks} != {np_}:
    report.fail(f"allreduce: {len(ranks)} of {np_} ranks reported", what)
  elif bad:
    r = bad[0]
    index, got, want = r["first_mismatch"]
    report.fail(
      f"allreduce not bitwise exact on ranks {[b['rank'] for b in bad]}",
      f"{what}; rank {r['rank']}: {r['mismatches']:,} elements differ, first [{index}] = "
      f"{got!r}, expected {want!r}",
    )
  else:
    devices = sorted({r["device"].rsplit("device:", 1)[-1] for r in ranks})
    report.line(
      f"allreduce: bitwise exact on all {np_} ranks of horovodrun -np {np_}: {what}, "
      f"results on {', '.join(devices)}"
    )
    report.checked.append(f"allreduce bitwise exact at np={np_}")


def _rate(report, data_dir, work, batch, steps, np_, precision):
  try:
    extra = ["--precision", precision]
    return speed._trainer(data_dir, work, RECIPE, batch, steps, extra, np_=np_)
  except SystemExit as e:
    # The trainer's own one-line error, if it printed one; its output's tail goes to stderr.
    report.fail(f"trainers/cifar10.py --precision {precision} at np={np_} failed", _cause(e))
    print(str(e), file=sys.stderr)
    return None


def check_speed(report, data_dir, work, batch, steps, np_, gpus):
  """The speed and mixed-precision lines: the tutorial recipe at np=1 and np=N, then mixed_float16."""
  cpu = "" if gpus else f" (CPU: the {np_} processes share this machine's {os.cpu_count()} cores)"
  run = f"{RECIPE}, batch {batch}/worker, {steps} steps"
  one = _rate(report, data_dir, work, batch, steps, 1, "float32")
  if one is None:  # the same trainer on the same data: the other runs would fail alike
    report.not_checked.append(f"training at np={np_} and mixed precision (np=1 failed)")
    return
  many = one if np_ == 1 else _rate(report, data_dir, work, batch, steps, np_, "float32")
  if one and many:
    scaling = (
      ""
      if np_ == 1
      else f", np={np_} {many:.0f} img/s: scaling efficiency {many / (np_ * one):.0%}"
    )
    report.line(f"speed: {run}: np=1 {one:.0f} img/s{scaling}{cpu}")
    report.checked.append(
      f"training at np=1{f' and np={np_}' if np_ > 1 else ''}"
      + (f" ({many / (np_ * one):.0%} scaling)" if gpus and np_ > 1 else "")
    )
  mixed = _rate(report, data_dir, work, batch, steps, np_, "mixed_float16")
  if mixed and many:
    note = (
      ""
      if gpus
      else " (CPU: float16 is emulated; tensor cores need a GPU of compute capability 7.0+)"
    )
    report.line(
      f"mixed precision: {run}, np={np_}: --precision mixed_float16 {mixed:.0f} img/s vs "
      f"float32 {many:.0f} img/s: speed-up {mixed / many:.2f}x{note}"
    )
    report.checked.append("mixed_float16 training" + (f" ({mixed / many:.2f}x)" if gpus else ""))


def verdict(report):
  checked = "; ".join(report.checked) or "nothing"
  not_checked = f"; not checked: {'; '.join(report.not_checked)}" if report.not_checked else ""
  if report.failed:
    head, code = f"FAIL ({'; '.join(report.failed)})", FAILED
  elif report.missing:
    head, code = f"NOT READY ({len(report.missing)} missing, see the error lines)", MISSING
  elif report.partial:
    head, code = f"PASS {report.partial}", PASSED
  else:
    head, code = "PASS", PASSED
  report.line(f"verdict: {head}; checked: {checked}{not_checked}")
  return code


def parse_args(argv=None):
  p = argparse.ArgumentParser(
    prog="python -m bench.gpu_check",
    description=__doc__,
    epilog=EXIT_CODES,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
    "--steps",
    type=int,
    help=f"Training steps per run, at least 8 (default {GPU_STEPS}; {CPU_STEPS} on the CPU path).",
  )
  p.add_argument(
    "--batch-size", type=int, help="Per-worker batch size (default: the recipe's, 128)."
  )
  p.add_argument(
    "--data-dir",
    help="The Beam job's cifar10 output (metadata.json and shards). Default: sample data, "
    "generated and converted in the work directory.",
  )
  p.add_argument(
    "--work-dir", help="Where the runs (and sample data) go. Default: a temporary directory."
  )
  p.add_argument(
    "--gpus",
    type=int,
    default=0,
    help="GPUs this machine must show (exit 3 with fewer); 0: use what is found, and check "
    "the CPU path when there is no GPU and no NVIDIA driver.",
  )
  a = p.parse_args(argv)
  if a.steps is not None and a.steps < 8:
    p.error("--steps must be at least 8 (the rate is read from the trainer's last 3 of 4 logs)")
  if a.data_dir:
    meta = pathlib.Path(a.data_dir) / "metadata.json"
    if not meta.is_file():
      p.error(f"--data-dir {a.data_dir}: no metadata.json (the Beam job's output for cifar10)")
    dataset = json.loads(meta.read_text()).get("dataset")
    if dataset != "cifar10":
      p.error(f"--data-dir {a.data_dir}: holds {dataset} data (its metadata.json), not cifar10")
  return a


def main(argv=None):
  a = parse_args(argv)
  from bench import run as bench_run
  from trainers import recipes

  report = Report()
  work = pathlib.Path(a.work_dir or tempfile.mkdtemp(prefix="gpu-check-"))
  work.mkdir(parents=True, exist_ok=True)
  try:
    try:
      (found,) = speed._bench(["devices"])
    except SystemExit as e:
      report.fail("TensorFlow and Horovod did not start", _cause(e))
      print(str(e), file=sys.stderr)
      return verdict(report)
    gpus = check_devices(report, found, driver_cuda_version(), a.gpus)
    if not gpus and report.missing:
      return verdict(report)  # a GPU machine without GPUs: the CPU path would say nothing of it
    np_ = gpus or CPU_NP
    check_allreduce(report, np_, gpus, found["nccl_code"])
    data_dir = a.data_dir or str(bench_run._sample_tfrecords(work) / "cifar10")
    batch = a.batch_size or recipes.get(RECIPE).batch_size
    steps = a.steps or (GPU_STEPS if gpus else CPU_STEPS)
    check_speed(report, data_dir, work, batch, steps, np_, gpus)
    return verdict(report)
  finally:
    if not a.work_dir:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  sys.exit(main())
