"""Benchmarks: conversion throughput and peak memory of the Beam job (`make bench`).

Generates full-size CIFAR-10-format data (60,000 records) with the sample-data
generator, then times, in one run on this machine:
  1. the plain single-process loop a user would otherwise write (bench/baseline_loop.py);
  2. the Beam job with the settings `make preprocess` uses by default;
  3. the Beam job on the same data repeated 10x (600,000 records), to show
     whether peak memory stays flat as the data grows.
Peak memory is the largest summed RSS of the process and all its children
(Beam's worker processes included), sampled every 50 ms. Results are appended
to bench/RESULTS.md with the machine and date.
"""

import argparse
import datetime
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time

import psutil

from preprocess import sample_data

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"


def measure(cmd, env=None):
  """Runs `cmd`; returns (seconds, peak RSS of its process tree in MiB)."""
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  parent = psutil.Process(proc.pid)
  peak = 0
  while proc.poll() is None:
    total = 0
    try:
      for p in [parent] + parent.children(recursive=True):
        try:
          total += p.memory_info().rss
        except psutil.NoSuchProcess:
          pass
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
  return [sys.executable, "-m", "pipeline.build_tfrecords", "--dataset", "cifar10",
          "--raw-dir", str(raw), "--out-dir", str(out), "--overwrite"]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--work-dir", default=str(ROOT / ".cache" / "bench"))
  parser.add_argument("--scale", type=int, default=10, help="Data growth factor for the memory check.")
  parser.add_argument("--results", default=str(RESULTS))
  args = parser.parse_args()
  work = pathlib.Path(args.work_dir)
  raw, big = work / "raw", work / f"raw-x{args.scale}"
  if not (raw / "cifar10").exists():
    print("generating full-size CIFAR-10-format data ...", file=sys.stderr)
    sample_data.generate(str(raw), datasets=("cifar10",), full=True, seed=0)
  if not (big / "cifar10").exists():
    repeat_cifar(raw, big, args.scale)
  n = 60000
  rows = []
  print("baseline loop ...", file=sys.stderr)
  shutil.rmtree(work / "out-loop", ignore_errors=True)
  t_loop, m_loop = measure([sys.executable, "-m", "bench.baseline_loop",
                            str(raw / "cifar10" / "cifar-10-batches-bin"), str(work / "out-loop")])
  rows.append(("single-process loop (tf.train.Example + TFRecordWriter)", n, t_loop, m_loop))
  print("beam job ...", file=sys.stderr)
  t_beam, m_beam = measure(beam_cmd(raw, work / "out-beam"))
  rows.append(("Beam job, `make preprocess` defaults", n, t_beam, m_beam))
  print(f"beam job on {args.scale}x data ...", file=sys.stderr)
  t_big, m_big = measure(beam_cmd(big, work / "out-beam-big"))
  rows.append((f"Beam job, same defaults, data x{args.scale}", n * args.scale, t_big, m_big))
  shutil.rmtree(work / "out-beam-big", ignore_errors=True)

  cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
             platform.processor())
  lines = [f"\n## Conversion, {datetime.date.today().isoformat()}",
           f"Machine: {os.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB, "
           f"Python {platform.python_version()}, {platform.system()} {platform.release()}.\n",
           "| run | records | seconds | records/s | vs loop | peak RSS (MiB, all processes) |",
           "|---|---:|---:|---:|---:|---:|"]
  for name, count, secs, mem in rows:
    lines.append(f"| {name} | {count:,} | {secs:.1f} | {count / secs:,.0f} | "
                 f"{(count / secs) / (n / t_loop):.2f}x | {mem:,.0f} |")
  lines.append(f"\nPeak memory at x{args.scale} data / at x1: {m_big / m_beam:.2f}.")
  text = "\n".join(lines) + "\n"
  print(text)
  results = pathlib.Path(args.results)
  if not results.exists():
    results.write_text("# Benchmark results\n\nAppended by `make bench` (bench/run.py); newest last.\n")
  with results.open("a") as f:
    f.write(text)


if __name__ == "__main__":
  main()
