"""Watching a running Beam job: its output, its worker processes, and signals to the driver.

pipeline/build_tfrecords.py runs each conversion inside these: `CapturedStderr`
sends Beam's own logging to the run's log file, `WorkerWatch` turns a dead
local worker into one line instead of a hang, `Progress` logs finished shards,
`terminate_on_sigterm` makes SIGTERM (what a scheduler sends to stop a
job) end the run the way Ctrl-C does, and `PrivateTemp` gives the run and its
workers a temporary folder of their own, removed however the run ends.
"""

import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
import threading

# Lines of Beam's and its workers' own logging that say nothing to a user.
NOISE = re.compile(
  r"apitools not found|Logging handler created|Load pipeline options from file|"
  r"Discarding unparseable args|Using Any for unsupported type|"
  r"Starting finalize_write threads|Pipeline has additional dependencies|"
  r"Missing pipeline option \(runner\)"
)


class CapturedStderr:
  """Sends file descriptor 2 (Beam's and its worker processes' output) to the run's log file.

  Beam's worker processes inherit the driver's stderr and log to it at INFO
  before they read any option; their tracebacks on failure run to hundreds of
  lines. Everything goes to the log file; the terminal gets the lines that are
  warnings and not known noise, or everything with --verbose. The driver's own
  lines (`log` in main) go to the saved terminal descriptor directly.
  """

  terminal = None  # A file object on the real stderr while a capture is active.

  def __init__(self, log_path, verbose):
    self._log_path, self._verbose = log_path, verbose

  def __enter__(self):
    sys.stderr.flush()
    self._saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    CapturedStderr.terminal = os.fdopen(os.dup(self._saved), "w", buffering=1)
    self._thread = threading.Thread(target=self._pump, args=(read_end,), daemon=True)
    self._thread.start()
    return self

  def _pump(self, read_end):
    with os.fdopen(read_end, "rb") as pipe, open(self._log_path, "ab") as log:
      for line in pipe:
        # Keep draining the pipe even if the log cannot be written (disk full):
        # a full pipe would block every worker.
        with contextlib.suppress(OSError):
          log.write(line)
          log.flush()
        text = line.decode("utf-8", "replace")
        if self._verbose or (text.startswith("WARNING") and not NOISE.search(text)):
          os.write(self._saved, line)

  def __exit__(self, *exc):
    sys.stderr.flush()
    os.dup2(self._saved, 2)
    # Worker processes that are still shutting down hold the pipe open; their
    # last lines still reach the log file through the daemon thread.
    self._thread.join(timeout=2)
    CapturedStderr.terminal.close()
    CapturedStderr.terminal = None


class WorkerWatch:
  """Turns the death of a local Beam worker process into an error instead of a hang.

  With FnApiRunner in multi_processing mode, a worker process that dies (killed,
  out of memory) makes its supervising thread raise and the pipeline wait
  forever for the bundle it held. This watches for that thread's error,
  ends the worker processes this run started (`stop_workers`) and calls
  `on_death`, which cleans up, prints one line and exits the process.
  """

  _PREFIX = "Worker subprocess exited with return code "
  ending = False  # Set when the main thread is already reporting an interruption.
  active = None  # The watch of the pipeline running now, if any.
  _reported = threading.Lock()  # Taken by whoever reports the run's end first.

  @classmethod
  def first_to_report(cls):
    """True for the first caller only: one Ctrl-C reaches the main thread and a watch alike."""
    return cls._reported.acquire(blocking=False)

  def __init__(self, on_death):
    # Called with `describe()`'s line (None for an interruption) and the exit
    # status; cleans up and exits the process, never returns.
    self._on_death = on_death
    self.died = None  # The worker's return code, once one died.

  def __enter__(self):
    self._previous = threading.excepthook
    threading.excepthook = self._hook
    WorkerWatch.active = self
    return self

  def _hook(self, hook_args):
    text = str(hook_args.exc_value)
    if isinstance(hook_args.exc_value, RuntimeError) and text.startswith(self._PREFIX):
      if self.died is None and not WorkerWatch.ending:
        self.died = int(text[len(self._PREFIX) :].split()[0])
        if self.died in (-signal.SIGINT, 128 + signal.SIGINT):
          # Ctrl-C reached the worker first: an interruption, not a crash.
          self.stop_workers()
          self._on_death(None, 128 + signal.SIGINT)
        # The main thread waits on the lost bundle in a way no signal wakes
        # (tried: SIGINT to it); end the run from here.
        self.stop_workers()
        self._on_death(self.describe(), 1)
      return
    self._previous(hook_args)

  def __exit__(self, *exc):
    threading.excepthook = self._previous
    WorkerWatch.active = None

  def describe(self):
    code = self.died
    how = (
      f"killed by signal {-code}"
      if code < 0
      else f"exit status {code}, killed by signal {code - 128}"
      if code > 128
      else f"exit status {code}"
    )
    return f"a Beam worker process died ({how}; out of memory or killed?)"

  @staticmethod
  def stop_workers():
    """Kills the worker processes this driver started (its own descendants only)."""
    import psutil

    workers = [
      p
      for p in psutil.Process().children(recursive=True)
      if "sdk_worker_main" in " ".join(_cmdline(p))
    ]
    for p in workers:
      with contextlib.suppress(psutil.Error):
        p.kill()
    psutil.wait_procs(workers, timeout=5)


def _cmdline(process):
  try:
    return process.cmdline()
  except Exception:  # Exited meanwhile.
    return []


class Progress:
  """Logs finished shards and records every few seconds while the pipeline runs.

  Shards appear under their final names only when complete, so counting them in
  the output directory works the same for every runner, local or remote.
  """

  def __init__(self, name, out_dir, tasks, seconds, log):
    self._name, self._out_dir, self._seconds, self._log = name, out_dir, seconds, log
    self._records = {t.filename: t.count for t in tasks}
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def __enter__(self):
    if self._seconds > 0:
      self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    if self._thread.is_alive():
      self._thread.join()

  def _run(self):
    from pipeline import outdir  # Beam: imported once a run is under way.

    while not self._stop.wait(self._seconds):
      found = outdir.match(self._out_dir, "*.tfrecord")
      done = [os.path.basename(p) for p in found if os.path.basename(p) in self._records]
      self._log(
        f"{self._name}: {len(done)}/{len(self._records)} shards, "
        f"{sum(self._records[d] for d in done)}/{sum(self._records.values())} records read"
      )


class Terminated(KeyboardInterrupt):
  """SIGTERM reached the driver: handled as Ctrl-C is, with the signal's exit status."""

  exit_code = 128 + signal.SIGTERM


def _on_sigterm(signum, frame):
  del signum, frame
  # A scheduler signals the driver alone, where Ctrl-C reaches every process
  # of the terminal's group: end the local workers first, so none writes
  # after the driver's sweep of temporary files, and none's exit reads as a crash.
  WorkerWatch.ending = True
  WorkerWatch.stop_workers()
  if WorkerWatch.active is not None:
    # Inside Beam's run the main thread would wait for the killed workers'
    # bundles; end the run from here, as a dead worker does.
    WorkerWatch.active._on_death(None, Terminated.exit_code)
  raise Terminated()


def terminate_on_sigterm():
  """From now on SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread."""
  signal.signal(signal.SIGTERM, _on_sigterm)


class PrivateTemp:
  """A temporary folder of the run's own, set as TMPDIR for the driver and its workers.

  Beam's local runner leaves folders and files in the temporary folder
  (`beam-pipeline-temp*`, `beam-worker-options-*.json`) when a run is
  interrupted; inside this folder they go with it. `remove` is safe to call
  from any thread, also just before `os._exit`.
  """

  path = None

  def __enter__(self):
    self._saved = (os.environ.get("TMPDIR"), tempfile.tempdir)
    PrivateTemp.path = tempfile.mkdtemp(prefix="build_tfrecords-tmp-")
    os.environ["TMPDIR"] = tempfile.tempdir = PrivateTemp.path  # workers inherit the variable
    return self

  def __exit__(self, *exc):
    environ, tempfile.tempdir = self._saved
    if environ is None:
      os.environ.pop("TMPDIR", None)
    else:
      os.environ["TMPDIR"] = environ
    PrivateTemp.remove()

  @classmethod
  def remove(cls):
    if cls.path:
      shutil.rmtree(cls.path, ignore_errors=True)
