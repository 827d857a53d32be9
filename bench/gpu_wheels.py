"""The wheels a lent GPU's image lacks, for `bench/gpu_check.py prepare` (issue 22).

The image (Python 3.12, torch 2.11, transformers 5.17, no package index: ../shared/ENV.md) lacks
hydra-core, omegaconf, wandb, math-verify and datasets. `prepare` downloads, as wheels for its
Python and platform, those and every dependency of theirs the image lacks (IMAGE_PACKAGES below),
each at the version installed in the environment running it (the one the project is tested
with), walking each wheel's own Requires-Dist with the target's markers. A source-only release
(antlr4-python3-runtime 4.9.3) is built here into a pure-Python wheel.

Only the standard library at import time: gpu_check.py imports this on the GPU machine too
(TARGET_PY, TARGET_PLATFORMS), before anything is installed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

# What skyexp imports that the GPU image lacks (../shared/ENV.md, "A GPU, when one is lent").
# transformers is not carried: the image's 5.17 runs the GPU paths (tests/e2e/test_gpu.py and the
# tiny
# loop were rehearsed here against 5.17.0 with tokenizers 0.23.2 and huggingface_hub 1.33.0).
ROOTS = ["hydra-core", "omegaconf", "wandb", "math-verify", "datasets"]
# Carried though the image has it: pydantic (wandb's) needs typing-extensions >= 4.16, likely newer
# than the image's (the `imports` part lists every such conflict it finds there).
ALSO = ["typing-extensions"]
TARGET_PY = "3.12"
TARGET_PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                    "manylinux2014_x86_64", "manylinux1_x86_64"]
MARKER_ENV = {
    "python_version": TARGET_PY,
    "python_full_version": f"{TARGET_PY}.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
# The GPU image's Python packages as the device tool's notes list them (read on a machine
# running the image, 2026-11-17). A dependency named here is not carried.
IMAGE_PACKAGES = set(
    """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch
grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime
onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint
packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect
urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split()
)


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name(path: Path) -> str:
    return canon(path.name.split("-")[0])


def wheel_requires(path: Path) -> list[str]:
    """Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    return [
        line.split(":", 1)[1].strip()
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    ]


def needed(requirements: list[str], extras: set[str]) -> list[tuple[str, str, set[str]]]:
    """(name, specifier, extras) of the requirements that apply on the target Python/platform,
    given the extras the requirer was asked for."""
    from packaging.requirements import Requirement

    out = []
    for line in requirements:
        r = Requirement(line)
        if r.marker and not any(
            r.marker.evaluate({**MARKER_ENV, "extra": e}) for e in (extras or {""})
        ):
            continue
        out.append((r.name, str(r.specifier), set(r.extras)))
    return out


def missing_closure(roots: list[str], have: set[str], fetch) -> dict[str, Path]:
    """Every package reachable from `roots` through requirements that apply on the target, stopping
    at the ones in `have` (already in the image). `fetch(name, specifier) -> wheel path` gets one
    wheel; its METADATA gives the next requirements. Returns {canonical name: wheel}."""
    got: dict[str, Path] = {}
    done_extras: dict[str, set[str]] = {}
    queue: list[tuple[str, str, set[str]]] = [(r, "", set()) for r in roots]
    while queue:
        name, spec, extras = queue.pop(0)
        key = canon(name)
        if key in have:
            continue
        if key not in got:
            got[key] = fetch(name, spec)
            done_extras[key] = set()
            new = extras | {""}
        else:
            new = extras - done_extras[key]
        if new:
            done_extras[key] |= new
            queue += needed(wheel_requires(got[key]), new)
    return got


def installed_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def pip_fetch(name: str, spec: str, dest: Path) -> Path:
    """One wheel for the target: the version installed here if there is one, else the newest that
    meets `spec`. A source-only release (antlr4-python3-runtime) is built here and kept only if the
    result is pure Python."""
    pinned = installed_version(name)
    req = f"{name}=={pinned}" if pinned else f"{name}{spec}"
    before = set(dest.glob("*.whl"))
    platform = sum((["--platform", p] for p in TARGET_PLATFORMS), [])
    download = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        TARGET_PY,
        "--implementation",
        "cp",
        *platform,
        "-d",
        str(dest),
        req,
    ]
    r = subprocess.run(download, capture_output=True, text=True)
    if r.returncode != 0:
        build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dest), req]
        r2 = subprocess.run(build, capture_output=True, text=True)
        if r2.returncode != 0:
            raise SystemExit(
                f"prepare: no wheel for {req}:\n{r.stderr[-1500:]}\n{r2.stderr[-1500:]}"
            )
    new = [p for p in set(dest.glob("*.whl")) - before if wheel_name(p) == canon(name)]
    if len(new) != 1:
        raise SystemExit(
            f"prepare: expected one new wheel for {req}, found {sorted(p.name for p in new)}"
        )
    if r.returncode != 0 and not new[0].name.endswith("-py3-none-any.whl"):
        raise SystemExit(
            f"prepare: {new[0].name} was built for this machine, not the GPU image; find a wheel"
        )
    return new[0]


def prepare(wheels: Path, also: list[str]) -> int:
    """`also`: packages to carry though the image has them (one found too old there)."""
    wheels.mkdir(parents=True, exist_ok=True)
    for old in wheels.glob("*.whl"):  # one version of each: two would stop the install there
        old.unlink()
    have = IMAGE_PACKAGES - {canon(a) for a in also}
    got = missing_closure(ROOTS + also, have, lambda n, s: pip_fetch(n, s, wheels))
    rows = sorted((p.name, p.stat().st_size) for p in got.values())
    total = sum(size for _, size in rows)
    (wheels / "manifest.json").write_text(
        json.dumps(
            {"python": TARGET_PY, "roots": ROOTS, "total_bytes": total, "wheels": dict(rows)},
            indent=1,
        )
        + "\n"
    )
    for name, size in rows:
        print(f"{size / 2**20:7.2f} MiB  {name}")
    print(
        f"{total / 2**20:7.2f} MiB  total, {len(rows)} wheels in {wheels} (the device tool "
        "carries 64 MiB)"
    )
    return 0 if total < 48 * 2**20 else 1

