"""The rehearsal's image: docker/Dockerfile.cpu built with podman on a base it can get.

Where this sits: the first thing scripts/cluster_test.py needs after rendering
the overlay is the one image every rehearsal pod names; this module makes its
base (the public one, or an offline Debian stand-in made with mmdebstrap),
builds it and checks what the Dockerfile promises (uid 1000, no compiler).
scripts/gpu_image.py builds docker/Dockerfile (the GPU image) with the same
functions, from a Debian trixie base.
"""

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Base:
  """A Dockerfile's base image and the mmdebstrap stand-in used when it cannot be pulled.

  Attributes:
    public: The registry image the Dockerfile names by default.
    stand_in: The local tag of the stand-in.
    suite: The Debian release of the stand-in.
    packages: Comma-separated packages mmdebstrap adds to its minbase.
    components: The archive components in the stand-in's apt sources.
  """

  public: str
  stand_in: str
  suite: str
  packages: str
  components: str = "main"


CPU_BASE = Base(PUBLIC_BASE, STAND_IN_BASE, "bookworm", STAND_IN_PACKAGES)


def ensure_base(work, base=CPU_BASE):
  """The Dockerfile's base: the public one if it can be pulled, else the cached stand-in."""
  if run(PODMAN + ["image", "exists", base.public], check=False).returncode == 0:
    return base.public
  if run(PODMAN + ["pull", "-q", base.public], check=False, timeout=120).returncode == 0:
    return base.public
  if run(PODMAN + ["image", "exists", base.stand_in], check=False).returncode == 0:
    log(f"{base.public} cannot be pulled; using the cached stand-in {base.stand_in}")
    return base.stand_in
  log(f"{base.public} cannot be pulled; making {base.stand_in} with mmdebstrap ({base.suite})")
  tar = work / f"{base.suite}-base.tar"
  run(
    [
      "mmdebstrap",
      "--variant=minbase",
      f"--components={base.components}",
      f"--include={base.packages}",
      base.suite,
      str(tar),
    ]
  )
  run(PODMAN + ["import", "--change", 'CMD ["/bin/bash"]', str(tar), base.stand_in])
  tar.unlink()
  return base.stand_in


def build_image(image, base, work, dockerfile=DOCKERFILE, base_args=("BASE",)):
  """Builds dockerfile (context: the repository) as image, with base in each of base_args.

  Returns:
    The image's size in bytes. The build's output is in work/logs/build.log.
  """
  base_flags = [flag for arg in base_args for flag in ("--build-arg", f"{arg}={base}")]
  cmd = (
    PODMAN
    + ["build", "--runtime", "runc"]
    + ULIMITS
    + ["--layers"]
    + base_flags
    + [
      "--ignorefile",
      str(dockerfile) + ".dockerignore",
      "-f",
      str(dockerfile),
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
