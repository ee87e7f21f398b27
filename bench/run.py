"""Benchmarks (`make bench`): the trainer's command line against Keras fit; the Beam job; summaries.

`make bench` runs `--only cli` (bench/cli.py, issue 18, ~10 minutes on 2 cores):
the trainer timed as users run it, as whole processes, against a plain Keras
`model.fit` script (bench/keras_fit.py), and `horovodrun -np 2` against one
process on one core. `--only elastic` times elastic runs (bench/elastic.py,
issue 17). `--only speed` runs issue 11's in-process figures
(bench/speed.py); the rest of this docstring describes `--only conversion`
and `--only summaries`.

Generates full-size CIFAR-10-format data (60,000 records) with the sample-data
generator, then times, in one run on this machine:
  1. the plain single-process loop a user would otherwise write (bench/baseline_loop.py);
  2. the Beam job with the settings `make preprocess` uses by default;
  3. the Beam job on the same data repeated 10x (600,000 records), to show
     whether peak memory stays flat as the data grows.
Peak memory is the largest summed RSS of the process and all its children
(Beam's worker processes included), sampled every 50 ms.

Then it trains the CIFAR-10 tutorial model on the sample data with the default
summary settings and with summaries off, alternating, and reports the
step-time overhead of summaries. Results are appended to bench/RESULTS.md with
the machine and date.
"""

import argparse
import contextlib
import datetime
import importlib
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time

import psutil

from bench.paths import ROOT
from preprocess import sample_data
from preprocess import schema

RESULTS = ROOT / "bench" / "RESULTS.md"


def measure(cmd, env=None):
  """Runs `cmd`; returns (seconds, peak RSS of its process tree in MiB)."""
  start = time.perf_counter()
  proc = subprocess.Popen(
    cmd,
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  parent = psutil.Process(proc.pid)
  peak = 0
  while proc.poll() is None:
    total = 0
    try:
      for p in [parent] + parent.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
          total += p.memory_info().rss
    except psutil.NoSuchProcess:
      pass
    peak = max(peak, total)
    time.sleep(0.05)
  seconds = time.perf_counter() - start
  stderr = proc.stderr.read()
  if proc.returncode != 0:
    raise SystemExit(f"benchmark command failed: {' '.join(cmd)}\n{stderr[-2000:]}")
  return seconds, peak / 2**20


def repeat_cifar(src, dst, times):
  """CIFAR layout whose batch files hold `times` copies of the source records."""
  batches = dst / "cifar10" / "cifar-10-batches-bin"
  batches.mkdir(parents=True, exist_ok=True)
  for f in (src / "cifar10" / "cifar-10-batches-bin").iterdir():
    data = f.read_bytes()
    (batches / f.name).write_bytes(data if f.suffix == ".txt" else data * times)


def beam_cmd(raw, out):
  return [
    sys.executable,
    "-m",
    "pipeline.build_tfrecords",
    "--dataset",
    "cifar10",
    "--raw-dir",
    str(raw),
    "--out-dir",
    str(out),
    "--overwrite",
  ]


def _loop_seconds(output):
  """The trainer's own measure of its training loop ("trained N steps in X.XXs")."""
  line = next(l for l in output.splitlines() if l.startswith("trained ") and " steps in " in l)
  return float(line.split(" steps in ")[1].split("s ")[0])


def _sample_tfrecords(work):
  """The CIFAR-10 sample data, converted by the Beam job once (cached in the work dir).

  The cache is used only while it verifies against its metadata.json; one left by
  another version of the job (or damaged) is converted again.
  """
  raw, out = work / "raw-sample", work / "tfrecords-sample"
  try:
    schema.verify_data(str(out / "cifar10"))
  except (ValueError, OSError):
    shutil.rmtree(out, ignore_errors=True)
    sample_data.generate(str(raw), names=("cifar10",), seed=0)
    subprocess.run(
      beam_cmd(raw, out),
      cwd=ROOT,
      check=True,
      capture_output=True,
      env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
  return out


def summary_overhead(work, steps, repeats):
  """Seconds per step with default summaries and with none; min over repeats."""
  out = _sample_tfrecords(work)
  settings = {
    # A long run's defaults, given explicitly: a run as short as the benchmark's writes
    # scalars about 50 times and histograms every fifth of it by default.
    "defaults (--summary-every 100 --histogram-every 1000)": [
      "--summary-every",
      "100",
      "--histogram-every",
      "1000",
    ],
    "summaries off (--summary-every 0 --histogram-every 0)": [
      "--summary-every",
      "0",
      "--histogram-every",
      "0",
    ],
  }
  best = {name: float("inf") for name in settings}
  for _ in range(repeats):
    for name, flags in settings.items():
      cmd = [
        sys.executable,
        str(ROOT / "trainers" / "cifar10.py"),
        "--recipe",
        "cifar10_tutorial",
        "--data-dir",
        str(out / "cifar10"),
        "--model-dir",
        str(work / "overhead-run"),
        "--overwrite",
        "--max-steps",
        str(steps),
        "--batch-size",
        "64",
        "--mode",
        "train",
        "--no-export",
        "--eval-every",
        "0",
        "--checkpoint-every",
        str(steps),
      ] + flags
      result = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
      )
      best[name] = min(best[name], _loop_seconds(result.stdout) / steps)
  return best


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--work-dir", default=str(ROOT / ".cache" / "bench"))
  parser.add_argument(
    "--scale", type=int, default=10, help="Data growth factor for the memory check."
  )
  parser.add_argument("--results", default=str(RESULTS))
  parser.add_argument(
    "--only",
    choices=("cli", "elastic", "speed", "conversion", "summaries", "all"),
    default="cli",
    help="cli (default, `make bench`: the trainer's command line against Keras fit, "
    "issue 18, ~10 min on 2 cores); elastic (issue 17: the cost of commits, the time to "
    "re-form after a lost or added worker, ~5 min); speed (issue 11's in-process training figures); "
    "conversion (the Beam job); summaries (1000-step overhead); all.",
  )
  parser.add_argument(
    "--steps", type=int, default=1000, help="Training steps per summary-overhead run."
  )
  parser.add_argument(
    "--repeats", type=int, default=None, help="Alternating repeats (default: cli 3, others 2)."
  )
  args = parser.parse_args()
  work = pathlib.Path(args.work_dir)
  work.mkdir(parents=True, exist_ok=True)
  cpu = next(
    (l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
    platform.processor(),
  )
  machine = (
    f"Machine: {os.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB, "
    f"Python {platform.python_version()}, {platform.system()} {platform.release()}.\n"
  )
  text = ""
  for name in ("cli", "elastic"):
    # Whole processes on the sample data, alternating repeats (bench/cli.py, bench/elastic.py).
    if args.only in (name, "all"):
      module = importlib.import_module(f"bench.{name}")
      data_dir = _sample_tfrecords(work) / "cifar10"
      load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
      repeats = args.repeats or 3
      result = module.run(data_dir, work, repeats)
      text += module.markdown(result, datetime.date.today().isoformat(), machine, load, repeats)
  if args.only in ("speed", "all"):
    from bench import speed

    data_dir = str(_sample_tfrecords(work) / "cifar10")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    text += speed.markdown(
      speed.run(data_dir, work), datetime.date.today().isoformat(), machine, load
    )
  if args.only in ("conversion", "all"):
    text += conversion(work, args.scale, machine)
  if args.only in ("summaries", "all"):
    print("summary overhead ...", file=sys.stderr)
    per_step = summary_overhead(work, args.steps, args.repeats or 2)
    (with_summaries, without), names = per_step.values(), list(per_step)
    text += "\n".join(
      [
        f"\n## Summary overhead, {datetime.date.today().isoformat()}",
        machine,
        f"CIFAR-10 tutorial model, batch 64, one process, {args.steps} steps, best of {args.repeats or 2}.\n",
        "| summaries | ms/step |",
        "|---|---:|",
        f"| {names[0]} | {with_summaries * 1000:.1f} |",
        f"| {names[1]} | {without * 1000:.1f} |",
        f"\nOverhead of the default summaries: {(with_summaries / without - 1) * 100:+.1f}% step time.\n",
      ]
    )
  print(text)
  results = pathlib.Path(args.results)
  if not results.exists():
    results.write_text(
      "# Benchmark results\n\nAppended by `make bench` (bench/run.py); newest last.\n"
    )
  with results.open("a") as f:
    f.write(text)


def conversion(work, scale, machine):
  """Times the baseline loop and the Beam job; returns the Markdown section."""
  raw, big = work / "raw", work / f"raw-x{scale}"
  if not (raw / "cifar10").exists():
    print("generating full-size CIFAR-10-format data ...", file=sys.stderr)
    sample_data.generate(str(raw), names=("cifar10",), full=True, seed=0)
  if not (big / "cifar10").exists():
    repeat_cifar(raw, big, scale)
  n = 60000
  rows = []
  print("baseline loop ...", file=sys.stderr)
  shutil.rmtree(work / "out-loop", ignore_errors=True)
  t_loop, m_loop = measure(
    [
      sys.executable,
      "-m",
      "bench.baseline_loop",
      str(raw / "cifar10" / "cifar-10-batches-bin"),
      str(work / "out-loop"),
    ]
  )
  rows.append(("single-process loop (tf.train.Example + TFRecordWriter)", n, t_loop, m_loop))
  print("beam job ...", file=sys.stderr)
  t_beam, m_beam = measure(beam_cmd(raw, work / "out-beam"))
  rows.append(("Beam job, `make preprocess` defaults", n, t_beam, m_beam))
  print(f"beam job on {scale}x data ...", file=sys.stderr)
  t_big, m_big = measure(beam_cmd(big, work / "out-beam-big"))
  rows.append((f"Beam job, same defaults, data x{scale}", n * scale, t_big, m_big))
  shutil.rmtree(work / "out-beam-big", ignore_errors=True)

  lines = [
    f"\n## Conversion, {datetime.date.today().isoformat()}",
    machine,
    "| run | records | seconds | records/s | vs loop | peak RSS (MiB, all processes) |",
    "|---|---:|---:|---:|---:|---:|",
  ]
  for name, count, secs, mem in rows:
    lines.append(
      f"| {name} | {count:,} | {secs:.1f} | {count / secs:,.0f} | "
      f"{(count / secs) / (n / t_loop):.2f}x | {mem:,.0f} |"
    )
  lines.append(f"\nPeak memory at x{scale} data / at x1: {m_big / m_beam:.2f}.")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
