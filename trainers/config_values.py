"""The allowed values of a run's config, for its flags and for its config.json alike.

trainers/config.py parses the flags (argparse enforces their `choices`) and
reads a run's config.json back; both then pass through here, so a value that
the command line refuses is refused in a hand-edited config.json too, with one
line naming the file, the field and what is allowed. The choices themselves
live in one place, the flag table (`config.FLAGS`) and the registries of data
sets and recipes; `check_choices` takes them from there.
"""

import math

# --seed: the run seeds NumPy with seed + rank (keras.utils.set_random_seed),
# which takes [0, 2**32); this bound leaves room for 2**31 ranks.
MAX_SEED = 2**31 - 1


def flag(name):
  return "--" + name.replace("_", "-")


def check_values(error, values, label=flag):
  """Every numeric value in its range; `error(message)` is called with one line for the first bad one.

  Args:
    error: Called with the message (parser.error for flags; it does not return).
    values: {flag dest: value}; missing or None values are not checked.
    label: How a value is named in the message: its flag (the default), or its
      config.json key.
  """
  for name in (
    "batch_size",
    "max_steps",
    "checkpoint_every",
    "log_every",
    "keep_checkpoints",
    "lr_decay_steps",
    "steps_per_call",
  ):
    value = values.get(name)
    if value is not None and value < 1:
      error(f"{label(name)} must be at least 1")
  for name in (
    "eval_every",
    "warmup_steps",
    "early_stopping_patience",
    "summary_every",
    "histogram_every",
  ):
    if values.get(name) is not None and values[name] < 0:
      error(f"{label(name)} must not be negative")
  # float flags: nan compares false to everything, so test finiteness first.
  for name in ("epochs", "learning_rate", "lr_decay_rate", "lr_decay_epochs"):
    value = values.get(name)
    if value is not None and not (math.isfinite(value) and value > 0):
      error(f"{label(name)} must be a positive finite number, got {value}")
  warmup = values.get("warmup_epochs")
  if warmup is not None and not (math.isfinite(warmup) and warmup >= 0):
    error(f"{label('warmup_epochs')} must be a non-negative finite number, got {warmup}")
  if values.get("lr_decay_rate") is not None and values["lr_decay_rate"] > 1:
    error(f"{label('lr_decay_rate')} must be at most 1 (a decay), got {values['lr_decay_rate']}")
  seed = values.get("seed")
  if seed is not None and not 0 <= seed <= MAX_SEED:
    error(f"{label('seed')} must be between 0 and {MAX_SEED} (2**31 - 1), got {seed}")
  for name in ("data_dir", "model_dir", "eval_split"):
    value = values.get(name)
    if value is not None and not value.strip():
      error(f"{label(name)} must not be empty")


def check_choices(error, data, choices):
  """Each key of `data` that has `choices` holds one of them; `error` gets one line otherwise.

  Args:
    error: Called with the message; does not return.
    data: config.json's object (or its recipe object).
    choices: {key: the allowed values, in the order to list them}.
  """
  for key, allowed in choices.items():
    if key in data and (not isinstance(data[key], str) or data[key] not in allowed):
      error(f"{key} is {_shown(data[key])}, not one of {', '.join(allowed)}")


def _shown(value):
  text = repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"
  return text if len(text) <= 60 else text[:57] + "..."
