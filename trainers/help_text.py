"""What `--help` of the trainers shows besides the flags: defaults, and the recipes' values.

Used by trainers/config.py's parser: `HelpFormatter` adds each flag's default,
`recipe_table` is the epilog (per recipe of a data set the values of the
(recipe) flags; without --dataset, every data set and its recipes).
"""

import argparse
import textwrap

from preprocess import datasets
from trainers import recipes

# The generic entry (trainers/__main__.py); trainers/config.py names it too.
GENERIC = "python -m trainers"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
  """Every flag's default in --help (those without a fixed one say what decides it)."""

  def _get_help_string(self, action):
    text = action.help or ""
    if action.default is None and text.startswith("(recipe)"):
      return text + " (default: the recipe's value, listed below)"
    if action.default is None or "default" in text.lower():
      return text
    return super()._get_help_string(action)


def dataset_table():
  """The generic entry's --help epilog without --dataset: every data set and its recipes."""
  lines = [
    f"--dataset picks the data set, and with it the recipes and the default --data-dir; "
    f"`{GENERIC} --dataset NAME --help` shows the values of its recipes. Data sets and "
    "their recipes (* the default):"
  ]
  for name in datasets.names():
    default = recipes.default_for(name)
    names = [r + ("*" if r == default else "") for r in recipes.for_dataset(name)]
    lines.append(f"  {name}: {', '.join(names)}")
  header, rows = textwrap.fill(lines[0], 100), lines[1:]
  return "\n".join([header] + [textwrap.fill(row, 100, subsequent_indent="      ") for row in rows])


def recipe_table(dataset):
  """The --help epilog: what each (recipe) flag defaults to, per recipe."""
  if dataset is None:
    return dataset_table()
  lines = ["values of the (recipe) flags for a new run, by --recipe:"]
  for name in recipes.for_dataset(dataset):
    r = recipes.RECIPES[name]
    decay = (
      f" (every {r.lr_decay_epochs:g} epochs)"
      if r.lr_decay_epochs
      else f" (every {r.lr_decay_steps} steps)"
      if r.lr_decay_steps and r.lr_decay_rate != 1
      else ""
    )
    line = (
      f"  {name}: --batch-size {r.batch_size} --max-steps {r.max_steps} "
      f"--learning-rate {r.learning_rate:g} --lr-decay-rate {r.lr_decay_rate:g}{decay} "
      f"--eval-every {r.eval_every} --early-stopping-patience {r.early_stopping_patience or 0} "
      f"--log-every {r.log_every}"
    )
    lines.append(textwrap.fill(line, 100, subsequent_indent="      ", break_on_hyphens=False))
  return "\n".join(lines)
