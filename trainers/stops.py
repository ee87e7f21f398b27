"""Stop signals outside the training loop: every phase stops with one line and status 75.

Sits around the whole trainer process: trainers/entry.py installs the handler
before TensorFlow is imported, trainers/runner.py names the phase it is in
(start-up, training, the final evaluation, an evaluation, the export) and what
a stop there leaves. Inside the loop trainers/preemption.py's `StopSignal`
takes the signals over (it stops at a step every rank agrees on and writes a
checkpoint); everywhere else SIGTERM or SIGINT raises `Stopped` at once, and
the process prints one line and exits with `EXIT_STOPPED`, the loop's status.
Writes that must not be cut in half (a checkpoint, metrics.json, the swap of
an export) run `deferred`: a signal then stops the process when they are done.
A second signal ends the process at once (the default action), as in the loop.

Imports no TensorFlow, so the handler is in place before the slow imports.
"""

import contextlib
import os
import signal

# EX_TEMPFAIL of sysexits.h, as trainers/preemption.py's EXIT_PREEMPTED: retry the run.
EXIT_STOPPED = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)

_phase = ["start-up", "no checkpoint was written: rerun the same command"]
_state = {"received": None, "deferred": 0}


class Stopped(BaseException):
  """A stop signal outside the loop. A BaseException, as KeyboardInterrupt, so that
  `except Exception` clauses (which turn errors into one-line messages) pass it on."""

  def __init__(self, signum, phase, kept):
    super().__init__(f"received {signal.Signals(signum).name} during {phase}: stopped; {kept}")
    self.signum = signum


def _handle(signum, frame):
  del frame
  if _state["received"] is not None:
    # A second signal: the user insists; the default action ends the process now.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    return
  _state["received"] = signum
  _state["stopped"] = Stopped(signum, *_phase)  # said in the phase it came in
  if not _state["deferred"]:
    raise _state["stopped"]


def pending():
  """The `Stopped` of a stop signal this process already received, or None.

  A signal that lands while a TensorFlow or Horovod call is failing (a peer that
  stopped first broke the collective) surfaces as that call's error, or as
  pybind11's RuntimeError naming both; the stop is still the cause.
  """
  return _state.get("stopped")


@contextlib.contextmanager
def installed():
  """Within the block SIGTERM and SIGINT raise `Stopped` (or wait for a deferred write)."""
  previous = {s: signal.signal(s, _handle) for s in SIGNALS}
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


@contextlib.contextmanager
def phase(name, kept):
  """Within the block a stop is said to be during `name`, leaving what `kept` says."""
  previous = list(_phase)
  _phase[:] = [name, kept]
  try:
    yield
  finally:
    _phase[:] = previous


@contextlib.contextmanager
def deferred():
  """A signal within the block stops the process at its end, not in the middle of it."""
  _state["deferred"] += 1
  try:
    yield
  finally:
    _state["deferred"] -= 1
  if not _state["deferred"] and _state["received"] is not None:
    raise Stopped(_state["received"], *_phase)
