"""PNG figures of training loss and evaluation accuracy, drawn from TensorBoard event files.

The last step of the data flow, after training: trainers/train.py writes TF2
summaries under `<model_dir>/train/` and one directory per evaluated split,
`<model_dir>/validation/` and `<model_dir>/test/` (trainers/tags.py names the
runs and tags); this module reads their scalars back and draws, per run,
loss vs step and accuracy vs step, plus one figure comparing the precision@1 of
every run, for people who want a picture in a report rather than a TensorBoard
server. It only reads the event files, so it can run while training goes on.

Usage:
  python -m trainers.plots --logdir runs [--out-dir runs/plots]
"""

import collections
import os
import sys

# Reading event files loads TensorFlow, whose start-up log lines would bury the
# paths this tool prints; set before the import below, as trainers/cifar10.py does.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from matplotlib import style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from preprocess import cli
from trainers import tags

FIGSIZE = (10, 4)  # inches; with DPI, 1000x400 px: readable in a report at page width
DPI = 100
COMPARISON = "all_runs.png"

Series = collections.namedtuple("Series", ["steps", "values"])
Series.__doc__ = "One scalar tag: steps (int64, increasing, unique) and their values (float64)."


# --- reading ----------------------------------------------------------------


def _has_events(directory):
  # The same test TensorBoard uses (io_wrapper.IsTensorFlowEventsFile).
  return os.path.isdir(directory) and any("tfevents" in f for f in os.listdir(directory))


def find_runs(logdir):
  """Finds the runs under `logdir`: directories with event files in `train/`, `validation/` or
  `test/`.

  Args:
    logdir: Directory to search recursively; it may itself be a run.

  Returns:
    Sorted list of (name, path): `name` is the path relative to `logdir` (the
    basename of `logdir` when it is the run itself).
  """
  runs = []
  for path, dirs, _ in os.walk(logdir):
    dirs.sort()  # deterministic order, whatever the file system returns
    if any(_has_events(os.path.join(path, kind)) for kind in tags.RUNS):
      name = os.path.relpath(path, logdir)
      if name == os.curdir:
        name = os.path.basename(os.path.abspath(logdir))
      runs.append((name, path))
  return sorted(runs)


def read_scalars(event_dir):
  """Reads every scalar summary in one directory of event files.

  TF2 `tf.summary.scalar` stores TENSOR events, so they are read with the
  accumulator's tensor store, kept whole, and told apart from histograms and
  images by their plugin name. A resumed run writes a new event file into the
  same directory and repeats the steps since its last checkpoint; the value
  written last (by wall time) wins, as it belongs to the run that went on.

  Args:
    event_dir: A directory holding `events.out.tfevents.*` files (e.g. `<run>/train`).

  Returns:
    {tag: Series}, empty if the directory is missing or has no scalars.
  """
  if not _has_events(event_dir):
    return {}
  # purge_orphaned_data=False: the accumulator's own restart handling depends on
  # the file version and on events TF2 does not write; the dedup below is explicit.
  acc = event_accumulator.EventAccumulator(
    event_dir, size_guidance={event_accumulator.TENSORS: 0}, purge_orphaned_data=False
  )
  acc.Reload()
  try:
    tags = acc.PluginTagToContent("scalars")
  except KeyError:  # no scalar summaries at all
    return {}
  result = {}
  for tag in sorted(tags):
    events = sorted(acc.Tensors(tag), key=lambda e: e.wall_time)  # stable: file order breaks ties
    last = {}
    for e in events:
      last[e.step] = float(tensor_util.make_ndarray(e.tensor_proto).item())
    steps = sorted(last)
    result[tag] = Series(
      np.array(steps, dtype=np.int64), np.array([last[s] for s in steps], dtype=np.float64)
    )
  return result


def read_run(run_dir):
  """Returns {"train"|"validation"|"test"|"eval_train": {tag: Series}} for one run directory."""
  return {kind: read_scalars(os.path.join(run_dir, kind)) for kind in tags.RUNS}


# --- drawing ----------------------------------------------------------------


def _differs(a, b):
  """Whether two series differ on the steps they share (e.g. total_loss with weight decay)."""
  common, ia, ib = np.intersect1d(a.steps, b.steps, return_indices=True)
  if not len(common):
    return True
  return not np.allclose(a.values[ia], b.values[ib], rtol=1e-6, atol=1e-8)


def _raw_and_average(ax, raw, average, color, label):
  # The raw per-step value is noisy; when its moving average is there, the raw
  # curve fades into the background and the average carries the label.
  if raw is not None and average is not None:
    ax.plot(
      raw.steps, raw.values, color=color, alpha=0.3, linewidth=0.8, label=f"{label} (per step)"
    )
    ax.plot(
      average.steps, average.values, color=color, linewidth=1.8, label=f"{label} (moving avg)"
    )
  elif raw is not None or average is not None:
    s = raw if raw is not None else average
    ax.plot(
      s.steps,
      s.values,
      color=color,
      linewidth=1.2,
      label=label if raw is not None else f"{label} (moving avg)",
    )


def _eval_points(ax, series, color, marker, label):
  if series is not None:
    # A single test point needs a larger marker to be seen next to a curve.
    single = len(series.steps) == 1
    ax.plot(
      series.steps,
      series.values,
      color=color,
      marker=marker,
      markersize=10 if single else 5,
      linestyle="none" if single else "-",
      linewidth=1.0,
      label=label,
    )


def _finish(ax, title, ylabel):
  ax.set_title(title)
  ax.set_xlabel("step")
  ax.set_ylabel(ylabel)
  ax.grid(True, alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize="small", loc="best")
  else:
    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="gray")


def _has_plot_data(scalars):
  return any(
    t in scalars[run] for run in tags.RUNS for t in (tags.CROSS_ENTROPY, tags.PRECISION_AT_1)
  ) or any(t in scalars[tags.TRAIN] for t in (tags.TOTAL_LOSS, tags.CROSS_ENTROPY_AVG))


def _new_figure():
  fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
  FigureCanvasAgg(fig)  # Agg renders to PNG without a display
  return fig


def plot_run(name, scalars, path):
  """Writes one run's figure: loss vs step (left) and accuracy vs step (right).

  Args:
    name: Run name, used as the figure title.
    scalars: What `read_run` returns.
    path: PNG file to write.
  """
  train, val, test = (scalars[run] for run in (tags.TRAIN,) + tags.EVAL_RUNS)
  fig = _new_figure()
  loss_ax, acc_ax = fig.subplots(1, 2)

  ce, ce_avg = train.get(tags.CROSS_ENTROPY), train.get(tags.CROSS_ENTROPY_AVG)
  _raw_and_average(loss_ax, ce, ce_avg, "C0", "train cross-entropy")
  total, total_avg = train.get(tags.TOTAL_LOSS), train.get(tags.TOTAL_LOSS_AVG)
  # Without weight decay total_loss is cross_entropy again; a second identical
  # curve would only clutter the panel.
  if total is not None and (ce is None or _differs(total, ce)):
    _raw_and_average(loss_ax, total, total_avg, "C1", "train total loss")
  _eval_points(loss_ax, val.get(tags.CROSS_ENTROPY), "C2", "o", "validation loss")
  _eval_points(loss_ax, test.get(tags.CROSS_ENTROPY), "C3", "*", "test loss")
  _finish(loss_ax, "Loss", "loss")

  acc = train.get(tags.PRECISION_AT_1)
  if acc is not None:
    acc_ax.plot(
      acc.steps, acc.values, color="C0", alpha=0.5, linewidth=0.8, label="train accuracy (batch)"
    )
  _eval_points(acc_ax, val.get(tags.PRECISION_AT_1), "C2", "o", "validation precision@1")
  _eval_points(acc_ax, test.get(tags.PRECISION_AT_1), "C3", "*", "test precision@1")
  # --mode eval --eval-split train: the full split, evaluation weights, dropout off.
  full_train = scalars[tags.EVAL_TRAIN].get(tags.PRECISION_AT_1)
  _eval_points(acc_ax, full_train, "C4", "s", "train precision@1 (full split)")
  acc_ax.set_ylim(0, 1.02)  # the full range, so runs read the same way side by side
  _finish(acc_ax, "Accuracy", "accuracy / precision@1")

  fig.suptitle(name)
  fig.savefig(path, format="png")


def plot_comparison(runs, path):
  """Writes one figure overlaying every run's precision@1 (train accuracy if no eval).

  Each run gets one colour: its validation precision@1 curve, or its training
  accuracy (dashed, labelled so) when it has no validation, plus its test
  precision@1 as a star.

  Args:
    runs: Sorted list of (name, scalars), `scalars` as `read_run` returns.
    path: PNG file to write.
  """
  fig = _new_figure()
  ax = fig.subplots()
  for i, (name, scalars) in enumerate(runs):
    train = scalars[tags.TRAIN]
    # Ten colours, then the same colours dotted, so up to twenty runs stay apart.
    color, style = f"C{i % 10}", "-" if i < 10 else ":"
    val, test = (scalars[run].get(tags.PRECISION_AT_1) for run in tags.EVAL_RUNS)
    if val is not None:
      ax.plot(
        val.steps,
        val.values,
        color=color,
        linestyle=style,
        marker="o",
        markersize=4,
        label=f"{name} validation",
      )
    elif tags.PRECISION_AT_1 in train:
      acc = train[tags.PRECISION_AT_1]
      ax.plot(
        acc.steps,
        acc.values,
        color=color,
        linestyle="--",
        linewidth=1.0,
        label=f"{name} train accuracy",
      )
    if test is not None:
      ax.plot(
        test.steps,
        test.values,
        color=color,
        linestyle="none",
        marker="*",
        markersize=12,
        label=f"{name} test",
      )
  ax.set_ylim(0, 1.02)
  _finish(ax, "Precision@1 of all runs", "precision@1 (dashed: train accuracy)")
  fig.savefig(path, format="png")


# --- command line -----------------------------------------------------------


def _parse_args(argv):
  parser = cli.ArgumentParser(
    prog="python -m trainers.plots",
    description=(
      "Draw PNG figures of training loss and evaluation accuracy from the "
      "TensorBoard event files of training runs: one figure per run (loss vs "
      "step, accuracy vs step) and all_runs.png comparing the precision@1 of "
      "every run. A run is any directory under --logdir with event files in "
      "train/, validation/ or test/. Prints the paths it writes."
    ),
  )
  parser.add_argument(
    "--logdir", required=True, help="directory searched recursively for runs (e.g. runs)"
  )
  parser.add_argument(
    "--out-dir",
    help="where the PNGs go (default: <logdir>/plots); a run's figure is "
    "named after its path under --logdir, with / replaced by _",
  )
  return parser.parse_args(argv)


def figure_name(run_name):
  """The PNG file name of a run: its path under --logdir with / replaced by _."""
  return run_name.replace(os.sep, "_").replace("/", "_") + ".png"


def main(argv=None):
  args = _parse_args(argv)
  runs = find_runs(args.logdir) if os.path.isdir(args.logdir) else []
  if not runs:
    print(
      f"error: no runs under {args.logdir} (no train/, validation/ or test/ directory with "
      "event files)",
      file=sys.stderr,
    )
    return 2
  # Flattening / to _ can map two runs (a/b_c, a_b/c) to one file; one figure
  # silently replacing another in a report is worse than stopping.
  names = collections.Counter([figure_name(name) for name, _ in runs] + [COMPARISON])
  clashes = sorted(n for n, count in names.items() if count > 1)
  if clashes:
    print(
      f"error: several runs would be drawn to {', '.join(clashes)}; rename a run directory "
      "or pass a narrower --logdir",
      file=sys.stderr,
    )
    return 1
  out_dir = args.out_dir or os.path.join(args.logdir, "plots")
  os.makedirs(out_dir, exist_ok=True)
  plotted = []
  # style.context("default") ignores any matplotlibrc, so a figure looks the same on every machine.
  with style.context("default"):
    for name, path in runs:
      scalars = read_run(path)
      if not _has_plot_data(scalars):
        print(
          f"note: skipping {name}: no loss or accuracy scalars in train/, validation/ or test/",
          file=sys.stderr,
        )
        continue
      png = os.path.join(out_dir, figure_name(name))
      plot_run(name, scalars, png)
      print(png)
      plotted.append((name, scalars))
    if not plotted:
      print(
        f"error: none of the {len(runs)} runs under {args.logdir} has loss or accuracy scalars",
        file=sys.stderr,
      )
      return 1
    png = os.path.join(out_dir, COMPARISON)
    plot_comparison(plotted, png)
    print(png)
  return 0


if __name__ == "__main__":
  sys.exit(main())
