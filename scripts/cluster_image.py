"""The rehearsal's image: docker/Dockerfile.cpu built with podman on a base it can get.

Where this sits: the first thing scripts/cluster_test.py needs after rendering
the overlay is the one image every rehearsal pod names; this module makes its
base (the public one, or an offline Debian stand-in made with mmdebstrap),
builds it and checks what the Dockerfile promises (uid 1000, no compiler).
"""

import pathlib
import subprocess

from cluster_pod import PODMAN
from cluster_pod import RUN
from cluster_pod import ULIMITS
from cluster_pod import RehearsalError
from cluster_pod import log
from cluster_pod import run

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile.cpu"
# The Dockerfile's default base, and the offline stand-in for it: a Debian
# bookworm root file system with the same Python, made with mmdebstrap.
PUBLIC_BASE = "docker.io/library/python:3.11-slim-bookworm"
STAND_IN_BASE = "localhost/cnn-stand-in-base:bookworm-py3.11"
STAND_IN_PACKAGES = "python3.11,python3.11-venv,python3.11-dev,python3-pip,ca-certificates,netbase"
HOST_CA_BUNDLE = pathlib.Path("/etc/ssl/certs/ca-certificates.crt")


def ensure_base(work):
  """The Dockerfile's base: the public one if it can be pulled, else the cached stand-in."""
  if run(PODMAN + ["image", "exists", PUBLIC_BASE], check=False).returncode == 0:
    return PUBLIC_BASE
  if run(PODMAN + ["pull", "-q", PUBLIC_BASE], check=False, timeout=120).returncode == 0:
    return PUBLIC_BASE
  if run(PODMAN + ["image", "exists", STAND_IN_BASE], check=False).returncode == 0:
    log(f"{PUBLIC_BASE} cannot be pulled; using the cached stand-in {STAND_IN_BASE}")
    return STAND_IN_BASE
  log(
    f"{PUBLIC_BASE} cannot be pulled; making {STAND_IN_BASE} with mmdebstrap (bookworm, Python 3.11)"
  )
  tar = work / "bookworm-base.tar"
  run(["mmdebstrap", "--variant=minbase", f"--include={STAND_IN_PACKAGES}", "bookworm", str(tar)])
  run(PODMAN + ["import", "--change", 'CMD ["/bin/bash"]', str(tar), STAND_IN_BASE])
  tar.unlink()
  return STAND_IN_BASE


def build_image(image, base, work):
  cmd = (
    PODMAN
    + ["build", "--runtime", "runc"]
    + ULIMITS
    + [
      "--layers",
      "--build-arg",
      f"BASE={base}",
      "--ignorefile",
      str(DOCKERFILE) + ".dockerignore",
      "-f",
      str(DOCKERFILE),
      "-t",
      image,
    ]
  )
  if HOST_CA_BUNDLE.is_file():  # for pip behind a TLS-intercepting proxy; a secret, not a layer
    cmd += ["--secret", f"id=pip_ca,src={HOST_CA_BUNDLE}"]
  with open(work / "logs" / "build.log", "w") as out:
    code = subprocess.run(
      cmd + [str(ROOT)], stdout=out, stderr=subprocess.STDOUT, check=False
    ).returncode
  if code != 0:
    raise RehearsalError(f"image build failed (exit {code}); log: {work / 'logs' / 'build.log'}")
  size = int(run(PODMAN + ["image", "inspect", "--format", "{{.Size}}", image]).stdout)
  return size


def check_image(image):
  """What the runtime image promises: it runs as uid 1000 and carries no compiler."""
  user = run(RUN + ["--rm", "--network", "none", image, "id", "-u"]).stdout.strip()
  if user != "1000":
    raise RehearsalError(f"the image runs as uid {user}, not 1000")
  compiler = run(
    RUN
    + [
      "--rm",
      "--network",
      "none",
      "--entrypoint",
      "sh",
      image,
      "-c",
      "command -v g++ || command -v make || command -v cc",
    ],
    check=False,
  )
  if compiler.returncode == 0:
    raise RehearsalError("the runtime image carries a compiler")
