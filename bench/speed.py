"""Training-speed benchmarks of issue 11, each measured side by side in one run.

(a) the trainer (the real CLI, real input) against plain keras model.fit on the
same architecture and batch; (b) horovodrun -np 2 against -np 1 with one core per
worker, synthetic and real input; (c) the input pipeline against the step's
consumption; (d) mixed_bfloat16 and XLA on CPU, plus FLOPs per step. Pairs are
alternated and the median of the ratios reported, because the machine is shared.
"""

import json
import os
import re
import statistics
import subprocess
import sys

from bench.paths import ROOT

ENV = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
BIN = os.path.dirname(sys.executable)


def _bench(args, np_=None, pin=False):
  cmd = [sys.executable, "-m", "bench.workers"] + [str(a) for a in args]
  env = dict(ENV, **({"BENCH_PIN_LOCAL_RANK": "1"} if pin else {}))
  if np_:
    cmd = [os.path.join(BIN, "horovodrun"), "-np", str(np_), "-H", f"localhost:{np_}"] + cmd
  out = subprocess.run(
    cmd,
    cwd=ROOT,
    env=dict(env, PATH=f"{BIN}:{env.get('PATH', '')}"),
    capture_output=True,
    text=True,
    timeout=900,
  )
  lines = [l.split("BENCH ", 1)[1] for l in out.stdout.splitlines() if "BENCH " in l]
  if out.returncode or not lines:
    raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
  return [json.loads(l) for l in lines]


def _trainer(data_dir, work, recipe, batch, steps, extra=(), np_=None, pin=False):
  """The trainer's img/s after its first log interval (tracing excluded), from its log lines."""
  log_every = steps // 4
  cmd = [
    sys.executable,
    str(ROOT / "trainers" / "cifar10.py"),
    "--recipe",
    recipe,
    "--data-dir",
    data_dir,
    "--model-dir",
    str(work / f"run-{recipe}"),
    "--overwrite",
    "--max-steps",
    str(steps),
    "--batch-size",
    str(batch),
    "--mode",
    "train",
    "--no-export",
    "--eval-every",
    "0",
    "--early-stopping-patience",
    "0",
    "--log-every",
    str(log_every),
    "--checkpoint-every",
    str(steps),
    # A long run's default histogram cadence; a short run's own is a fifth of it.
    "--histogram-every",
    "1000",
  ] + list(extra)
  env = dict(ENV)
  if np_:
    cmd = [
      os.path.join(BIN, "horovodrun"),
      "-np",
      str(np_),
      "-H",
      f"localhost:{np_}",
      sys.executable,
      "-m",
      "bench.pinned",
    ] + cmd[1:]
    env["BENCH_PIN_LOCAL_RANK"] = "1" if pin else ""
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  if out.returncode:
    raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
  rates = [float(m.group(1)) for m in re.finditer(r"step \d+/\d+ .* (\d+) img/s \(", out.stdout)]
  return statistics.median(rates[1:])  # the first interval holds the tracing


def _ratio_pairs(a, b, repeats):
  """Alternates a() and b(); returns (median a, median b, median of the ratios a/b)."""
  xs, ys = [], []
  for _ in range(repeats):
    xs.append(a())
    ys.append(b())
  return (
    statistics.median(xs),
    statistics.median(ys),
    statistics.median(x / y for x, y in zip(xs, ys)),
  )


def run(data_dir, work, repeats=2):
  rows = {}
  # (a) trainer vs model.fit, same architecture and batch.
  for recipe, batch, steps in (("cifar10_tutorial", 128, 120), ("tiny", 32, 1200)):
    rows[f"a/{recipe}"] = _ratio_pairs(
      lambda: _trainer(data_dir, work, recipe, batch, steps),
      lambda: _bench(["fit", "--recipe", recipe, "--batch", batch, "--steps", steps // 2])[0][
        "img_per_s"
      ],
      repeats,
    )
    print(f"(a) {recipe}: {rows[f'a/{recipe}']}", file=sys.stderr)
  # Default summaries' cost (tutorial): defaults vs --summary-every 0 --histogram-every 0.
  rows["summaries"] = _ratio_pairs(
    lambda: _trainer(data_dir, work, "cifar10_tutorial", 128, 200),
    lambda: _trainer(
      data_dir,
      work,
      "cifar10_tutorial",
      128,
      200,
      ["--summary-every", "0", "--histogram-every", "0"],
    ),
    repeats,
  )
  # (b) scaling, one core per worker: synthetic step loop, then the real trainer.
  rows["b/synthetic"] = _ratio_pairs(
    lambda: (
      sum(
        r["img_per_s"] for r in _bench(["synthetic", "--batch", 64, "--steps", 60], np_=2, pin=True)
      )
      / 2
    ),
    lambda: _bench(["synthetic", "--batch", 64, "--steps", 60], np_=1, pin=True)[0]["img_per_s"],
    repeats,
  )
  rows["b/real"] = _ratio_pairs(
    lambda: _trainer(data_dir, work, "cifar10_tutorial", 64, 120, np_=2, pin=True),
    lambda: _trainer(data_dir, work, "cifar10_tutorial", 64, 120, np_=1, pin=True),
    repeats,
  )
  # (c) input pipeline (tutorial policy, batch 128), cached and streaming.
  rows["c/cached"] = _bench(["input", "--data-dir", data_dir, "--steps", 60])[0]
  rows["c/streaming"] = _bench(["input", "--data-dir", data_dir, "--steps", 30, "--no-cache"])[0]
  # (d) precision and XLA on CPU (synthetic, tutorial model, batch 128).
  base = lambda *extra: (
    lambda: _bench(["synthetic", "--batch", 128, "--steps", 30, *extra])[0]["img_per_s"]
  )
  rows["d/bf16"] = _ratio_pairs(base("--precision", "mixed_bfloat16"), base(), repeats)
  rows["d/xla"] = _ratio_pairs(base("--xla"), base(), repeats)
  rows["flops/cifar10_tutorial"] = _bench(["flops", "--recipe", "cifar10_tutorial"])[0]
  rows["flops/tiny"] = _bench(["flops", "--recipe", "tiny"])[0]
  return rows


def markdown(rows, date, machine, load):
  a_t, a_y = rows["a/cifar10_tutorial"], rows["a/tiny"]
  s, bs, br = rows["summaries"], rows["b/synthetic"], rows["b/real"]
  cc, cs = rows["c/cached"], rows["c/streaming"]
  need = a_t[0]  # the tutorial trainer's own consumption, one process, both cores
  need_tiny = a_y[0]
  ft, fy = rows["flops/cifar10_tutorial"], rows["flops/tiny"]
  ok = lambda good: "met" if good else "MISSED"
  return "\n".join(
    [
      f"\n## Training speed (issue 11), {date}",
      machine,
      f"Load average at start: {load}. Medians of alternating pairs; ratios are medians of "
      "per-pair ratios.\n",
      "| figure | value | target |",
      "|---|---:|---|",
      f"| (a) tutorial, batch 128: trainer / model.fit | {a_t[0]:.0f} / {a_t[1]:.0f} img/s = "
      f"{a_t[2]:.2f}x | >= 0.95x: {ok(a_t[2] >= 0.95)} |",
      f"| (a) tiny, batch 32: trainer / model.fit | {a_y[0]:.0f} / {a_y[1]:.0f} img/s = "
      f"{a_y[2]:.2f}x | >= 0.9x: {ok(a_y[2] >= 0.9)} |",
      f"| default summaries (tutorial): step-rate without / with | {s[1]:.0f} / {s[0]:.0f} img/s"
      f", cost {(1 / s[2] - 1) * 100:+.1f}% | <= 3%: {ok(1 / s[2] - 1 <= 0.03)} |",
      f"| (b) synthetic, tutorial batch 64/worker: np=2 / np=1, one core each | {bs[0]:.0f} / "
      f"{bs[1]:.0f} img/s = {bs[2]:.2f}x | >= 1.8x: {ok(bs[2] >= 1.8)} |",
      f"| (b) real input (trainer), same | {br[0]:.0f} / {br[1]:.0f} img/s = {br[2]:.2f}x | "
      f">= 1.8x: {ok(br[2] >= 1.8)} |",
      f"| (c) input, cached (tutorial policy, batch 128) / tutorial trainer's need | "
      f"{cc['img_per_s']:.0f} / {need:.0f} img/s = {cc['img_per_s'] / need:.1f}x (first batch "
      f"after {cc['first_batch_s']:.1f}s: decoding the rank's part) | >= 5x: "
      f"{ok(cc['img_per_s'] >= 5 * need)} |",
      f"| (c) same / tiny trainer's need | {cc['img_per_s']:.0f} / {need_tiny:.0f} img/s = "
      f"{cc['img_per_s'] / need_tiny:.1f}x | (tiny needs more than the tutorial) |",
      f"| (c) input, streaming (no cache, as before) | {cs['img_per_s']:.0f} img/s | |",
      f"| (d) mixed_bfloat16 / float32 (synthetic, tutorial, batch 128, CPU) | "
      f"{rows['d/bf16'][0]:.0f} / {rows['d/bf16'][1]:.0f} img/s = {rows['d/bf16'][2]:.2f}x | |",
      f"| (d) --xla / no XLA, same | {rows['d/xla'][0]:.0f} / {rows['d/xla'][1]:.0f} img/s = "
      f"{rows['d/xla'][2]:.2f}x | |",
      f"| FLOPs per image, training (3x forward; tf.profiler) | tutorial "
      f"{ft['train_flops_per_image'] / 1e6:.0f} M (batch 128: "
      f"{ft['train_flops_per_image'] * 128 / 1e9:.1f} GFLOP/step); tiny "
      f"{fy['train_flops_per_image'] / 1e6:.2f} M (batch 32: "
      f"{fy['train_flops_per_image'] * 32 / 1e6:.1f} MFLOP/step) | |",
      "",
    ]
  )
