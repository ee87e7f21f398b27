"""`make gpu-image`: docker/Dockerfile (the GPU image) built with podman here, then checked.

Where this sits: the GPU half of scripts/cluster_image.py. It makes the base the
same way (the public Debian trixie image if it can be pulled, else an
mmdebstrap stand-in with contrib and non-free, where the CUDA toolkit lives),
builds with the same function, and checks what the image promises on a machine
without a GPU: uid 1000 and no compiler (cluster_image.check_image), Horovod
built with TensorFlow, NCCL and Gloo, TensorFlow's CUDA 12 / cuDNN 9 build,
`hvd.init()`, and the tiny recipe trained for 20 steps under `horovodrun -np 2`
with one "no GPU found" line. Too long for CI (about an hour cold on 2 cores);
its figures are in docs/cluster.md.

  python scripts/gpu_image.py [--image TAG] [--work DIR]
"""

import argparse
import json
import pathlib
import shutil
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from cluster_image import ROOT  # noqa: E402
from cluster_image import Base  # noqa: E402
from cluster_image import build_image  # noqa: E402
from cluster_image import check_image  # noqa: E402
from cluster_image import ensure_base  # noqa: E402
from cluster_mpijob import assert_trained  # noqa: E402
from cluster_pod import PODMAN  # noqa: E402
from cluster_pod import RUN  # noqa: E402
from cluster_pod import RehearsalError  # noqa: E402
from cluster_pod import run  # noqa: E402

DOCKERFILE = ROOT / "docker" / "Dockerfile"
IMAGE = "localhost/cnn-pipeline:gpu"
GPU_BASE = Base(
  public="docker.io/library/debian:trixie-slim",
  stand_in="localhost/cnn-stand-in-base:trixie",
  suite="trixie",
  packages="python3,python3-venv,ca-certificates,netbase",
  components="main contrib non-free",
)
NO_GPU_LINE = "no GPU found: training on the CPU"
STEPS = 20
BUILD_INFO = (
  "import json, tensorflow as tf; b = tf.sysconfig.get_build_info(); "
  "print(json.dumps({k: b.get(k) for k in ('is_cuda_build', 'cuda_version', 'cudnn_version')}))"
)
HVD_INIT = (
  "import horovod.tensorflow as hvd; hvd.init(); "
  "print('hvd.init ok: size', hvd.size(), 'nccl_built', hvd.nccl_built())"
)
TRAIN = f"""set -e
python -m preprocess.sample_data --out-dir /tmp/data/raw --dataset cifar10 >/dev/null
python -m pipeline.build_tfrecords --dataset cifar10 --raw-dir /tmp/data/raw \
  --out-dir /tmp/data/tfrecords >/dev/null
horovodrun -np 2 -H localhost:2 python trainers/cifar10.py --recipe tiny \
  --data-dir /tmp/data/tfrecords/cifar10 --model-dir /runs/tiny --max-steps {STEPS} \
  --batch-size 32 --warmup-steps 5 --checkpoint-every 10 --log-every 10 --eval-every 0
"""


def in_image(image, *cmd, volumes=()):
  """Runs cmd in a fresh container of image (no network: the checks need none)."""
  flags = [f for v in volumes for f in ("-v", v)]
  return run(RUN + ["--rm", "--network", "none"] + flags + [image] + list(cmd)).stdout


def check_gpu_build(image, work):
  """The checks of issue 22 part 2; returns what they printed, for docs/cluster.md."""
  report = []
  check = in_image(image, "horovodrun", "--check-build")
  for want in ("TensorFlow", "NCCL", "Gloo"):
    if f"[X] {want}" not in check:
      raise RehearsalError(f"horovodrun --check-build does not list {want}:\n{check}")
  report.append(check.strip())
  info = json.loads(in_image(image, "python", "-c", BUILD_INFO).strip().splitlines()[-1])
  if not (
    info["is_cuda_build"]
    and str(info["cuda_version"]).startswith("12")
    and str(info["cudnn_version"]).startswith("9")
  ):
    raise RehearsalError(f"TensorFlow is not a CUDA 12 / cuDNN 9 build: {info}")
  report.append(f"tf.sysconfig.get_build_info(): {info}")
  report.append(in_image(image, "python", "-c", HVD_INIT).strip().splitlines()[-1])
  runs = work / "runs"
  shutil.rmtree(runs, ignore_errors=True)
  runs.mkdir(parents=True)
  shutil.chown(runs, 1000, 1000)  # the image's user writes there
  start = time.monotonic()
  text = in_image(image, "sh", "-c", TRAIN, volumes=[f"{runs}:/runs"])
  seconds = time.monotonic() - start
  no_gpu = [line for line in text.splitlines() if NO_GPU_LINE in line]
  if len(no_gpu) != 1:
    raise RehearsalError(f"expected one '{NO_GPU_LINE}' line, got {len(no_gpu)}:\n{text[-3000:]}")
  assert_trained(runs / "tiny", STEPS, text, "horovodrun -np 2 in the GPU image")
  report.append(f"{no_gpu[0]}\ntiny recipe, {STEPS} steps, horovodrun -np 2: {seconds:.0f} s")
  return report


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--image", default=IMAGE, help="tag of the built image")
  parser.add_argument("--work", type=pathlib.Path, default=ROOT / ".cache" / "gpu-image")
  args = parser.parse_args(argv)
  (args.work / "logs").mkdir(parents=True, exist_ok=True)
  try:
    base = ensure_base(args.work, GPU_BASE)
    start = time.monotonic()
    size = build_image(args.image, base, args.work, DOCKERFILE, ("BUILD_BASE", "RUNTIME_BASE"))
    print(f"[gpu-image] built {args.image} from {base} in {time.monotonic() - start:.0f} s")
    print(f"[gpu-image] size {size / 1e9:.2f} GB (log: {args.work / 'logs' / 'build.log'})")
    check_image(args.image)
    for line in check_gpu_build(args.image, args.work):
      print(line)
  except RehearsalError as e:
    print(f"[gpu-image] error: {e}", file=sys.stderr)
    return 1
  image_id = run(PODMAN + ["image", "inspect", "--format", "{{.Id}}", args.image]).stdout
  print(f"[gpu-image] ok: {args.image} {image_id.strip()[:12]}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
