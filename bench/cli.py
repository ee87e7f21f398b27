"""The trainer timed as users run it (issue 18): whole processes, against plain Keras `model.fit`.

`make bench` (bench/run.py, `--only cli`) runs this. Each command is run as a
whole process with S1 and with S2 training steps; its rate is
(S2 - S1) x images per step / (t2 - t1), so start-up, imports, tracing, the
first decode of the data and the final checkpoint cancel, and what is left is
what each extra step costs. The two commands of a comparison alternate
(a(S1), b(S1), a(S2), b(S2), repeated) and the median of the per-repeat
ratios is reported, because the machine may be shared.

  (a) trainers/cifar10.py as a user runs it, with summaries, histograms and
      the export off and logging every million steps (evaluation and
      checkpoints at their defaults), against bench/keras_fit.py: the same
      architecture, optimizer, TFRecords and augmentation, validating on the
      test split at the recipe's --eval-every, as the trainer does;
  (b) the same command under `horovodrun -np 2` (both cores) against one
      process pinned to one core (taskset).
"""

import os
import resource
import statistics
import subprocess
import sys
import time

from bench.paths import ROOT

ENV = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
BIN = os.path.dirname(sys.executable)
# (recipe, batch per worker, S1, S2, --eval-every): S2 - S1 steps take a few
# seconds on 2 cores; None evaluates at the recipe's cadence (tiny: every 50
# steps; the tutorial's 1000 is past S2), 0 never (the training step alone).
CASES = (
  ("cifar10_tutorial", 128, 20, 140, None),
  ("tiny", 32, 100, 2100, None),
  ("tiny", 32, 100, 2100, 0),
)
SCALING = ("cifar10_tutorial", 128, 20, 100)


def trainer_cmd(data_dir, model_dir, recipe, batch, steps, extra=()):
  """The trainer's command line of (a), as a user types it."""
  return [
    sys.executable,
    str(ROOT / "trainers" / "cifar10.py"),
    "--recipe",
    recipe,
    "--batch-size",
    str(batch),
    "--data-dir",
    str(data_dir),
    "--model-dir",
    str(model_dir),
    "--overwrite",
    "--mode",
    "train",
    "--max-steps",
    str(steps),
    "--no-export",
    "--summary-every",
    "0",
    "--histogram-every",
    "0",
    "--log-every",
    "1000000",
  ] + list(extra)


def fit_cmd(data_dir, recipe, batch, steps, eval_every):
  return [
    sys.executable,
    "-m",
    "bench.keras_fit",
    "--data-dir",
    str(data_dir),
    "--recipe",
    recipe,
    "--batch-size",
    str(batch),
    "--steps",
    str(steps),
    "--eval-every",
    str(eval_every),
  ]


def seconds(cmd):
  """(wall seconds, CPU seconds of the whole process tree) of `cmd`; fails with its output's tail."""
  env = dict(ENV, PATH=f"{BIN}:{ENV.get('PATH', '')}")
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.perf_counter()
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  took = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if out.returncode:
    raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  return took, cpu


def compare(a, b, s1, s2, images_per_step, repeats):
  """Differential rates of two commands, alternating.

  Args:
    a, b: Functions steps -> command line.
    s1, s2: The two step counts.
    images_per_step: Images one step of either command trains on (all workers).
    repeats: Pairs of differentials.

  Returns:
    {"a", "b": median img/s (wall clock); "ratio": median of the per-repeat
    ratios a/b, "ratios": those; "cpu_ratio": median of the per-repeat ratios
    of CPU seconds per extra step, b over a (above 1: a's steps cost less CPU),
    which a busy machine disturbs less than the wall clock}.
  """
  rates_a, rates_b, cpu_ratios = [], [], []
  for _ in range(repeats):
    (t_a1, c_a1), (t_b1, c_b1) = seconds(a(s1)), seconds(b(s1))
    (t_a2, c_a2), (t_b2, c_b2) = seconds(a(s2)), seconds(b(s2))
    rates_a.append((s2 - s1) * images_per_step / max(t_a2 - t_a1, 1e-9))
    rates_b.append((s2 - s1) * images_per_step / max(t_b2 - t_b1, 1e-9))
    cpu_ratios.append((c_b2 - c_b1) / max(c_a2 - c_a1, 1e-9))
  ratios = [x / y for x, y in zip(rates_a, rates_b)]
  return {
    "a": statistics.median(rates_a),
    "b": statistics.median(rates_b),
    "ratio": statistics.median(ratios),
    "ratios": ratios,
    "cpu_ratio": statistics.median(cpu_ratios),
  }


def _key(recipe, eval_every):
  return f"a/{recipe}" + ("" if eval_every is None else f"/eval-every-{eval_every}")


def _load():
  return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def run(data_dir, work, repeats=3, cases=CASES, scaling=SCALING):
  """Returns {name: `compare`'s dict plus "load", the load average at its start}."""
  from trainers import recipes

  rows = {}
  for recipe, batch, s1, s2, eval_every in cases:
    every = recipes.get(recipe).eval_every if eval_every is None else eval_every
    extra = () if eval_every is None else ("--eval-every", str(eval_every))

    def fit(steps, r=recipe, b=batch, e=every):
      # Validation only where the trainer evaluates within `steps` (never past it).
      return fit_cmd(data_dir, r, b, steps, e if e and e <= steps else 0)

    load = _load()
    rows[_key(recipe, eval_every)] = dict(
      compare(
        lambda s, r=recipe, b=batch, x=extra: trainer_cmd(data_dir, work / f"cli-{r}", r, b, s, x),
        fit,
        s1,
        s2,
        batch,
        repeats,
      ),
      load=load,
    )
    print(f"(a) {_key(recipe, eval_every)}: {rows[_key(recipe, eval_every)]}", file=sys.stderr)
  if scaling:
    recipe, batch, s1, s2 = scaling
    horovodrun = [os.path.join(BIN, "horovodrun"), "-np", "2", "-H", "localhost:2"]
    load = _load()
    row = compare(
      lambda s: horovodrun + trainer_cmd(data_dir, work / "cli-np2", recipe, batch, s),
      lambda s: ["taskset", "-c", "0"] + trainer_cmd(data_dir, work / "cli-np1", recipe, batch, s),
      s1,
      s2,
      batch,
      repeats,
    )
    # compare() counts one worker's images for both; np=2 trains twice as many.
    ratios = [2 * r for r in row["ratios"]]
    rows["b/np2"] = dict(
      a=2 * row["a"], b=row["b"], ratio=statistics.median(ratios), ratios=ratios, load=load
    )
    print(f"(b) np=2/np=1: {rows['b/np2']}", file=sys.stderr)
  return rows


def markdown(rows, date, machine, load, repeats, cases=CASES):
  ok = lambda good: "met" if good else "MISSED"
  lines = [
    f"\n## The trainer's command line against Keras fit (issue 18), {date}",
    machine,
    f"Load average at start: {load}. Whole processes, differential over two step counts; "
    f"{repeats} alternating repeats, medians (ratio: median of the per-repeat ratios). "
    "The trainer runs with summaries, histograms and the export off and logs every million "
    "steps; rows without --eval-every evaluate at the recipe's cadence, and model.fit "
    "validates on the same split at the same steps (bench/keras_fit.py). CPU per step, fit / "
    "trainer: CPU seconds (all threads) per extra step of fit over the trainer's, which a busy "
    "machine disturbs less than the wall clock; above 1, the trainer's steps cost less CPU.\n",
    "| figure | value | per-repeat ratios | CPU per step, fit / trainer | load at its start | "
    "target |",
    "|---|---:|---|---:|---|---|",
  ]
  targets = {"cifar10_tutorial": 0.95, "tiny": 0.9}
  for recipe, batch, s1, s2, eval_every in cases:
    if _key(recipe, eval_every) not in rows:
      continue
    row = rows[_key(recipe, eval_every)]
    how = "" if eval_every is None else f", --eval-every {eval_every} (fit: no validation)"
    lines.append(
      f"| (a) {recipe}, batch {batch}, steps {s1}->{s2}{how}: trainer / model.fit | "
      f"{row['a']:.0f} / {row['b']:.0f} img/s = {row['ratio']:.2f}x | "
      f"{', '.join(f'{r:.2f}' for r in row['ratios'])} | {row['cpu_ratio']:.2f} | "
      f"{row['load']} | >= {targets[recipe]}x: {ok(row['ratio'] >= targets[recipe])} |"
    )
  if "b/np2" in rows:
    recipe, batch, s1, s2 = SCALING
    row = rows["b/np2"]
    lines.append(
      f"| (b) {recipe}, batch {batch}/worker, steps {s1}->{s2}: horovodrun -np 2 / one process "
      f"on one core | {row['a']:.0f} / {row['b']:.0f} img/s = {row['ratio']:.2f}x | "
      f"{', '.join(f'{r:.2f}' for r in row['ratios'])} | | {row['load']} | "
      f">= 1.8x: {ok(row['ratio'] >= 1.8)} |"
    )
  return "\n".join(lines) + "\n"
