"""Elastic runs (issue 17): what the commits cost, and how long the job takes to re-form.

`python -m bench.run --only elastic` runs this (a few minutes on 2 cores).

  (c) the cost of elastic mode: `horovodrun -np 2` of trainers/cifar10.py with
      a discovery script (elastic; the state committed after every call of
      --steps-per-call 10 steps) against the same command with the same two
      hosts fixed (-H), both as whole processes, differential over two step
      counts (bench/cli.py's `compare`); the tiny model, whose steps are the
      cheapest, so the commits weigh the most;
  (d) time to re-form, from the moment the test harness acts to the trainer's
      `world size A -> B` line (state synced in the new world) and to the first
      progress line after it (training again; the first call after a re-form
      traces the step function anew): a worker killed (kill -9), the chief's
      host dropped from the discovery output, and that host listed again (the
      new worker's start-up, TensorFlow import included, is part of it).
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import psutil

from bench.cli import BIN
from bench.cli import ENV
from bench.cli import compare
from bench.cli import trainer_cmd
from bench.paths import ROOT

HOSTS = ("localhost", "127.0.0.1")  # two hosts to horovodrun on one machine, both without ssh
OVERHEAD = ("tiny", 32, 100, 2100)  # recipe, batch per worker, S1, S2


def discovery(work, hosts=HOSTS):
  """A discovery script printing the `host:1` lines of a file; returns (script, that file).

  Edit the file (`set_hosts`) to add or remove hosts while the job runs.
  """
  hosts_file = work / "elastic-hosts"
  set_hosts(hosts_file, hosts)
  script = work / "elastic-discover.sh"
  script.write_text(f"#!/bin/sh\ncat '{hosts_file}'\n")
  script.chmod(0o755)
  return script, hosts_file


def set_hosts(hosts_file, hosts):
  hosts_file.write_text("".join(f"{h}:1\n" for h in hosts))


def elastic_cmd(script):
  horovodrun = os.path.join(BIN, "horovodrun")
  return [horovodrun, "-np", "2", "--min-np", "1", "--max-np", "2"] + [
    "--host-discovery-script",
    str(script),
  ]


def trainer_processes(horovodrun_pid, script="trainers/"):
  """{initial rank: (pid, host)} of the trainer processes a horovodrun started.

  The rank is the one the process started with (HOROVOD_RANK in its
  environment); an elastic job may renumber its ranks later. Used by this
  benchmark and by the tests that kill or signal one rank.
  """
  found = {}
  for p in psutil.Process(horovodrun_pid).children(recursive=True):
    try:
      if "python" in p.name() and script in " ".join(p.cmdline()):
        env = p.environ()
        found[int(env["HOROVOD_RANK"])] = (p.pid, env["HOROVOD_HOSTNAME"])
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError):
      continue
  return found


class JobError(Exception):
  """An elastic job that did not log what was awaited, or did not end; the message ends with its log."""


class ElasticJob:
  """An elastic horovodrun (`cmd`) whose output lines are time-stamped as they arrive.

  Used by this benchmark and by tests/test_elastic.py; a context manager that
  stops the job on leaving.
  """

  def __init__(self, cmd):
    env = dict(ENV, PATH=f"{BIN}:{ENV.get('PATH', '')}")
    self.proc = subprocess.Popen(
      [str(a) for a in cmd],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    self.lines = []  # (time, line)
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.proc.stdout:
      self.lines.append((time.time(), line.rstrip("\n")))

  def log(self):
    return "\n".join(line for _, line in list(self.lines))

  def _fail(self, what):
    self.stop()
    raise JobError(f"{what}; the job's log ends:\n{self.log()[-5000:]}")

  def wait_for(self, pattern, after=0.0, timeout=600):
    """(time, match) of the first line after `after` matching `pattern`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
      for t, line in list(self.lines):
        match = re.search(pattern, line)
        if t >= after and match:
          return t, match
      if self.proc.poll() is not None and not self._reader.is_alive():
        break
      time.sleep(0.05)
    self._fail(f"no line matching {pattern!r}")

  def finish(self, timeout=600):
    """horovodrun's exit code, once it has ended and its output is read."""
    try:
      code = self.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self._fail(f"the job did not end in {timeout} s")
    self._reader.join(timeout=10)
    return code

  def workers(self):
    return trainer_processes(self.proc.pid)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.stop()

  def stop(self):
    """SIGTERM to horovodrun: every rank stops at one step (the preemption path)."""
    if self.proc.poll() is None:
      self.proc.send_signal(signal.SIGTERM)
      try:
        self.proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        for p in psutil.Process(self.proc.pid).children(recursive=True):
          p.kill()
        self.proc.kill()
        self.proc.wait()


def _reform(job, acted, before, after):
  """Seconds from `acted` to the `world size before -> after` line and to training again."""
  t_world, match = job.wait_for(rf"world size {before} -> {after} at step (\d+)", after=acted)
  t_step, _ = job.wait_for(r"\]<stdout>:step \d+/", after=t_world)
  return {"to_world": t_world - acted, "to_training": t_step - acted, "step": int(match.group(1))}


def reform_times(data_dir, work):
  """Re-form times of a killed worker, and of a host dropped and listed again."""
  script, hosts_file = discovery(work)
  flags = ["--steps-per-call", "5", "--log-every", "5", "--eval-every", "0"]

  def job(name):
    model_dir = work / f"run-elastic-{name}"
    cmd = elastic_cmd(script) + trainer_cmd(
      data_dir, model_dir, "cifar10_tutorial", 32, 100000, flags
    )
    return ElasticJob(cmd)

  rows = {}
  with job("kill") as kill:
    kill.wait_for(r"step 100/")
    pid, _ = kill.workers()[1]
    acted = time.time()
    os.kill(pid, signal.SIGKILL)
    rows["killed worker, 2 -> 1"] = _reform(kill, acted, 2, 1)
  set_hosts(hosts_file, HOSTS)
  with job("hosts") as hosts:
    hosts.wait_for(r"step 100/")
    _, chief_host = hosts.workers()[0]
    acted = time.time()
    set_hosts(hosts_file, [h for h in HOSTS if h != chief_host])
    rows["chief's host dropped, 2 -> 1"] = _reform(hosts, acted, 2, 1)
    acted = time.time()
    set_hosts(hosts_file, HOSTS)
    rows["host listed again, 1 -> 2"] = _reform(hosts, acted, 1, 2)
  for name, row in rows.items():
    print(f"(d) {name}: {row}", file=sys.stderr)
  return rows


def run(data_dir, work, repeats=3):
  """{"overhead": `compare`'s dict, "reform": {scenario: seconds}}."""
  recipe, batch, s1, s2 = OVERHEAD
  script, _ = discovery(work)
  # The same two hosts as the discovery script lists, so only the elastic mode differs.
  fixed = [os.path.join(BIN, "horovodrun"), "-np", "2", "-H", ",".join(f"{h}:1" for h in HOSTS)]
  extra = ("--steps-per-call", "10")
  overhead = compare(
    lambda s: (
      elastic_cmd(script) + trainer_cmd(data_dir, work / "run-elastic-c", recipe, batch, s, extra)
    ),
    lambda s: fixed + trainer_cmd(data_dir, work / "run-fixed-c", recipe, batch, s, extra),
    s1,
    s2,
    2 * batch,
    repeats,
  )
  print(f"(c) elastic / fixed: {overhead}", file=sys.stderr)
  return {"overhead": overhead, "reform": reform_times(data_dir, work)}


def markdown(result, date, machine, load, repeats):
  o = result["overhead"]
  recipe, batch, s1, s2 = OVERHEAD
  lines = [
    f"\n## Elastic runs (issue 17), {date}",
    machine,
    f"Load average at start: {load}.\n",
    "| figure | value | per-repeat ratios | CPU per step, fixed / elastic |",
    "|---|---:|---|---:|",
    f"| (c) {recipe}, batch {batch}/worker, steps {s1}->{s2}, a commit every 10 steps: "
    f"elastic / fixed hosts, horovodrun -np 2 | {o['a']:.0f} / {o['b']:.0f} img/s = "
    f"{o['ratio']:.2f}x | {', '.join(f'{r:.2f}' for r in o['ratios'])} | {o['cpu_ratio']:.2f} |",
    "",
    "| (d) re-form, cifar10_tutorial batch 32/worker | to the `world size` line | "
    "to training again | at step |",
    "|---|---:|---:|---:|",
  ]
  for name, row in result["reform"].items():
    lines.append(
      f"| {name} | {row['to_world']:.1f} s | {row['to_training']:.1f} s | {row['step']} |"
    )
  lines.append(f"\n({repeats} alternating repeats for (c); one run of each scenario for (d).)\n")
  return "\n".join(lines)
