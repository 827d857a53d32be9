#!/usr/bin/env python3
"""GPU check: prepared here, run in one command on a lent GPU (issue 22).

    .venv/bin/python bench/gpu_check.py prepare            # here, with network: wheels the GPU
image lacks -> .whl/
    python3 bench/gpu_check.py run --out "$OUT"             # on the GPU machine (no network): the
check
    .venv/bin/python bench/gpu_check.py run --dry-run       # no CUDA: install + parse checks only
(the default there)
    .venv/bin/python bench/gpu_check.py run --rehearse      # no CUDA: run the gpu tests and the
tiny loop on CPU

`prepare` (bench/gpu_wheels.py) downloads, as wheels for the GPU image's Python (3.12, manylinux
x86_64), the packages skyexp needs that the image lacks (hydra-core, omegaconf, their antlr runtime,
wandb, math-verify, datasets) and every dependency of theirs the image lacks, each pinned to the
version installed in the environment running `prepare`. It prints the list and the total size,
which must stay well under the device tool's 64 MiB.

`run` installs those wheels into a fresh target directory (`pip install --no-index --no-deps
--target`, so the image's torch and transformers stay as they are), puts it and the repository on
PYTHONPATH, and runs, each part under its own timeout within an overall budget (7 min):
  1. `pytest -m gpu` over the test files that carry the marker;
  2. `python -m skyexp` on CUDA in bf16: the tiny model (SFT, eval, a few RL steps) and a randomly
     initialised Qwen2 of 0.52B parameters (hidden 1024, 24 layers, 16 heads, MLP 5632, built from
     config fields, no download), reporting step time, tokens/s and peak GPU memory;
  3. `bench/memory.py --device cuda`, if that file exists.
It writes gpu_check.json (the summary, rewritten after every part), gpu_check.log (all output),
pytest_gpu.xml and each loop's metrics.jsonl into --out (default: a new temporary directory), and
exits 1 if any part failed. Without CUDA it says so and runs the dry run: the wheels install into a
fresh directory, the gpu tests are collected, and every `python -m skyexp` command composes and
validates (`--cfg job` and the typed schema); `--rehearse` runs the tests (on CPU, see
tests/e2e/test_gpu.py) and the tiny loop (CPU, fp32) for real.

Only the standard library is imported at the top: `run` starts before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WHEELS = ROOT / ".whl"
BUDGET_S = 420  # the whole run; the device tool's call gets a timeout_s above this (README)

sys.path.insert(
    0, str(Path(__file__).resolve().parent)
)  # the sibling module, however this file is loaded
from gpu_wheels import ALSO, TARGET_PLATFORMS, TARGET_PY, prepare  # noqa: E402

# --- run: what each part runs ----------------------------------------------------------------

# tests/e2e/test_train_smoke.py's TINY (tests/e2e/test_gpu_check.py keeps the two in step)
SMOKE = [
    "sft.steps=6",
    "sft.batch_size=16",
    "context.stages.0.steps=3",
    "algo.batch_size=4",
    "algo.n=4",
    "eval.size=8",
    "eval.n=4",
    "eval.max_response_len=24",
    "context.stages.0.max_response_len=24",
    "logger.progress=false",
    "entropy=fixed",
    "entropy.coef=0.01",
    "trainer.lr=1e-3",
]
GPU = ["trainer.device=cuda", "model.dtype=bfloat16"]
# The rehearsal on CPU: fp32 (bf16 is slow on these CPUs), one thread (shared cores), and the smoke
# test's own small step shape instead of the GPU shape.
REHEARSAL = ["trainer.device=cpu", "model.dtype=float32", "trainer.threads=1"]


def key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge(*groups: list[str], drop: tuple[str, ...] = ()) -> list[str]:
    """Overrides in order, a later one replacing an earlier one of the same key (Hydra rejects
    two values for one key); keys starting with a `drop` prefix removed."""
    out: dict[str, str] = {}
    for group in groups:
        for o in group:
            out[key(o)] = o
    return [o for k, o in out.items() if not k.startswith(drop)]


# name -> (overrides on top of SMOKE and the device's, RL steps expected)
LOOPS = {
    # the tiny model with the default experiment's step shape (32 prompts x 8 samples, 64 tokens);
    # default logger (W&B offline: the carried wandb runs)
    "tiny": (
        [
            "context.stages.0.steps=6",
            "algo.batch_size=32",
            "algo.n=8",
            "context.stages.0.max_response_len=64",
        ],
        6,
    ),
    # a randomly initialised Qwen2 of 0.52B parameters (the tiny byte-level vocabulary, so the
    # layers dominate): no SFT, no eval, entropy bonus on so every row trains though no answer is
    # right
    "qwen2_0p5b": (
        [
            "model.hidden_size=1024",
            "model.num_layers=24",
            "model.num_heads=16",
            "model.intermediate_size=5632",
            "sft=none",
            "eval.before=false",
            "eval.after=false",
            "logger=local",
            "trainer.save_final=false",
            "context.stages.0.steps=5",
            "algo.batch_size=16",
            "algo.n=8",
            "context.stages.0.max_response_len=256",
            "trainer.micro_batch_size=32",
            "trainer.lr=1e-5",
        ],
        5,
    ),
}


def loop_overrides(name: str, rehearse: bool = False) -> tuple[list[str], int]:
    """The loop's overrides and the RL steps it must log."""
    if rehearse:
        return merge(SMOKE, REHEARSAL), 3
    extra, steps = LOOPS[name]
    return merge(SMOKE, GPU, extra, drop=("sft.",) if "sft=none" in extra else ()), steps


def gpu_test_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if "mark.gpu" in p.read_text())


# --- run: machinery ------------------------------------------------------------------------------


class Check:
    """Runs the parts as child processes (own process group, killed whole on timeout), logs their
    output, keeps the summary and rewrites it after every part."""

    def __init__(self, out: Path, budget_s: float, env: dict[str, str]):
        self.out, self.env = out, env
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget_s
        self.log = open(out / "gpu_check.log", "a", buffering=1)
        self.summary: dict = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "budget_s": budget_s,
            "parts": {},
        }

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.log.write(line + "\n")

    def save(self) -> None:
        self.summary["wall_s"] = round(time.monotonic() - self.t0, 1)
        (self.out / "gpu_check.json").write_text(
            json.dumps(self.summary, indent=1, default=str) + "\n"
        )

    def cmd(self, args: list[str], timeout: float, env: dict[str, str] | None = None) -> dict:
        """Run args; its output goes to the log. Returns rc (124 on timeout), wall_s, the output's
        tail."""
        left = self.deadline - time.monotonic()
        if left < 15:
            return {"cmd": " ".join(args), "rc": None, "skipped": "out of time"}
        timeout = min(timeout, left - 5)
        self.log.write(f"\n$ {' '.join(args)}   (timeout {timeout:.0f} s)\n")
        self.log.flush()
        start = self.log.tell()
        t0 = time.monotonic()
        p = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env or self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            rc = 124
        self.log.flush()
        with open(self.out / "gpu_check.log") as f:
            f.seek(start)
            tail = f.read()[-3000:]
        return {
            "cmd": " ".join(args),
            "rc": rc,
            "wall_s": round(time.monotonic() - t0, 1),
            "tail": tail,
        }

    def part(self, name: str, result: dict) -> bool:
        """Record a part's result (ok: rc 0); True unless it failed."""
        ok = result.get("rc") == 0
        skipped = result.get("skipped")
        result = {"ok": ok if not skipped else None, **result}
        if ok or skipped:
            result.pop("tail", None)
        self.summary["parts"][name] = result
        self.save()
        status = f"skipped ({skipped})" if skipped else ("ok" if ok else "FAILED")
        brief = {k: v for k, v in result.items() if k not in ("cmd", "tail", "ok", "skipped")}
        self.say(f"[gpu_check] {name}: {status}  {json.dumps(brief, default=str)[:600]}")
        if not ok and not skipped and result.get("tail"):
            self.say("    " + result["tail"][-1500:].replace("\n", "\n    "))
        return bool(ok or skipped)


def child_json(check: Check, args: list[str], timeout: float) -> tuple[dict | None, str]:
    """Run `python <args>`, which prints one line `RESULT <json>`: (that object or None, stderr's
    tail)."""
    try:
        r = subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, env=check.env, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    check.log.write(r.stdout + r.stderr)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    return (json.loads(line[7:]) if line else None), r.stderr[-1500:]


def probe(check: Check) -> dict:
    code = (
        "import json, platform, torch, transformers; c = torch.cuda.is_available(); "
        "print('RESULT ' + "
        "json.dumps({'python': platform.python_version(), 'torch': torch.__version__, "
        "'transformers': transformers.__version__, 'cuda': c, "
        "'gpu': torch.cuda.get_device_name(0) if c else None, "
        "'bf16': torch.cuda.is_bf16_supported() if c else None, "
        "'nccl': torch.distributed.is_nccl_available()}))"
    )
    info, err = child_json(check, ["-c", code], 120)
    return info or {"cuda": False, "error": err}


def install(check: Check, wheels: Path, site: Path, cross: bool) -> dict:
    files = sorted(wheels.glob("*.whl"))
    if not files:
        return {
            "rc": 1,
            "tail": f"no wheels in {wheels}: "
            "run `.venv/bin/python bench/gpu_check.py prepare` first",
        }
    tags = ["--python-version", TARGET_PY, "--implementation", "cp", "--only-binary=:all:",
            *sum((["--platform", p] for p in TARGET_PLATFORMS), [])] if cross else []
    r = check.cmd(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--upgrade",
            "--find-links",
            str(wheels),
            "--target",
            str(site),
            *tags,
            *map(str, files),
        ],
        300,
    )
    installed = len(list(site.glob("*.dist-info"))) if site.is_dir() else 0
    r.update(
        wheels=len(files),
        installed=installed,
        mib=round(sum(f.stat().st_size for f in files) / 2**20, 1),
    )
    if r["rc"] == 0 and installed != len(files):
        r["rc"] = 1
    return r


def import_check(check: Check, site: Path) -> dict:
    """The carried modules and skyexp's training module import (imports_child); conflicts between
    the carried wheels' requirements and the image's versions are listed, not failed on."""
    res, err = child_json(check, [str(Path(__file__).resolve()), "_imports", str(site)], 180)
    mods = (res or {}).get("modules", {})
    ok = bool(mods) and not any(str(v).startswith("FAILED") for v in mods.values())
    return {"rc": 0 if ok else 1, **(res or {}), "tail": err}


def pytest_part(check: Check, collect_only: bool, on_cpu: bool) -> dict:
    files = gpu_test_files()
    xml = check.out / "pytest_gpu.xml"
    args = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rA",
        *files,
    ]
    args += ["--collect-only"] if collect_only else [f"--junitxml={xml}"]
    env = {**check.env, "SKYEXP_GPU_TESTS_ON_CPU": "1"} if on_cpu else None
    r = check.cmd(args, 60 if collect_only else 200, env)
    r["files"] = files
    if collect_only:
        m = re.search(r"(\d+) tests? collected", r.get("tail", ""))
        r["collected"] = int(m.group(1)) if m else 0
        if r["rc"] == 0 and not r["collected"]:
            r["rc"] = 1
    elif xml.exists():
        r.update(junit(xml))
    return r


def junit(xml: Path) -> dict:
    import xml.etree.ElementTree as ET

    outcomes: dict[str, str] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = case.get("name", "?")
        bad = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        outcomes[name] = (
            "passed" if bad is None else f"{bad.tag}: {(bad.get('message') or '')[:300]}"
        )
    counts = {
        k: sum(v.split(":")[0] == k for v in outcomes.values())
        for k in ("passed", "failure", "error", "skipped")
    }
    return {"counts": counts, "tests": outcomes}


def loop_part(
    check: Check, name: str, work: Path, dry: bool, rehearse: bool, extra: list[str]
) -> dict:
    overrides, steps = loop_overrides(name, rehearse)
    overrides = merge(overrides, extra)
    if dry:
        r = check.cmd([sys.executable, "-m", "skyexp", "--cfg", "job", *overrides], 60)
        v = check.cmd(
            [sys.executable, str(Path(__file__).resolve()), "_validate", json.dumps(overrides)], 60
        )
        return {**r, "rc": r["rc"] or v["rc"], "overrides": overrides, "validate_rc": v["rc"],
                "tail": r.get("tail", "") + v.get("tail", "")}
    outputs, stats = work / f"out_{name}", work / f"stats_{name}.json"
    env = {**check.env, "SKYEXP_OUTPUTS": str(outputs)}
    r = check.cmd(
        [sys.executable, str(Path(__file__).resolve()), "_loop", str(stats), *overrides], 200, env
    )
    r["overrides"] = overrides
    runs = [p.parent for p in outputs.rglob(".hydra")] if outputs.is_dir() else []
    if stats.exists():
        r.update(json.loads(stats.read_text()))
    if runs:
        r.update(loop_metrics(runs[0], steps))
        if (runs[0] / "metrics.jsonl").exists():
            shutil.copy(runs[0] / "metrics.jsonl", check.out / f"metrics_{name}.jsonl")
    if r["rc"] == 0 and not r.get("finite_ok"):
        r["rc"] = 1
    return r


def loop_metrics(run_dir: Path, steps: int) -> dict:
    """Step time, tokens/s and the loss' health from a run's metrics.jsonl (medians over the RL
    steps after the first, which pays for warm-up)."""
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    rl = [r for r in rows if "actor/pg_loss" in r]
    if not rl:
        return {"rl_steps": 0, "finite_ok": False}
    warm = rl[1:] or rl

    def med(k: str) -> float | None:
        vals = [r[k] for r in warm if isinstance(r.get(k), (int, float))]
        return round(statistics.median(vals), 4) if vals else None

    finite = all(
        abs(r.get(k, 0.0)) < float("inf")
        for r in rl
        for k in ("actor/pg_loss", "actor/grad_norm", "actor/entropy")
    )
    out = {
        "rl_steps": len(rl),
        "step_s": med("timing_s/step"),
        "gen_s": med("timing_s/gen"),
        "update_s": med("timing_s/update"),
        "tokens_per_s": med("perf/throughput"),
        "response_len": med("response_length/mean"),
        "grad_norm": med("actor/grad_norm"),
        "entropy": med("actor/entropy"),
        "sampler_logprob_gap": med("rollout/logprob_diff"),
        "finite_ok": finite
        and len(rl) == steps
        and any(r.get("actor/grad_norm", 0) > 0 for r in rl),
    }
    summary = run_dir / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        out.update(
            {k: s[k] for k in ("wall_s", "pass@1_before", "pass@1_after", "sft_cached") if k in s}
        )
    return out


def memory_part(check: Check, dry: bool) -> dict:
    script = ROOT / "bench" / "memory.py"
    if not script.exists():
        return {"rc": None, "skipped": "bench/memory.py is not in this tree"}
    args = ["--help"] if dry else ["--device", "cuda"]
    return check.cmd([sys.executable, str(script), *args], 60 if dry else 180)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu_check_out_")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_work_"))
    site = work / "site"  # a fresh target directory every run
    carry_site = sys.version_info[:2] == tuple(
        map(int, TARGET_PY.split("."))
    )  # the wheels are for 3.12
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "SKYEXP_CACHE": str(work / "cache"),
        "PYTHONPATH": os.pathsep.join(
            [
                str(ROOT),
                *([str(site)] if carry_site else []),
                *filter(None, [os.environ.get("PYTHONPATH")]),
            ]
        ),
    }
    check = Check(out, args.budget, env)
    info = probe(check)
    cuda = bool(info.get("cuda"))
    mode = "gpu" if cuda else ("rehearse" if args.rehearse else "dry-run")
    if args.dry_run:
        mode = "dry-run"
    check.summary.update(mode=mode, probe=info, out=str(out), work=str(work))
    check.say(f"[gpu_check] {json.dumps(info)}")
    if not cuda:
        check.say(
            f"[gpu_check] no CUDA device: {mode} (installs, then checks that every command parses"
            + ("; runs the gpu tests and the tiny loop on CPU)" if mode == "rehearse" else ")")
        )
    parts = (
        set(args.parts.split(","))
        if args.parts
        else {"install", "imports", "pytest", "tiny", "qwen2_0p5b", "memory"}
    )
    dry = mode == "dry-run"
    ok = True
    if "install" in parts:
        ok &= check.part(
            "install", install(check, Path(args.wheels).resolve(), site, cross=not carry_site)
        )
    if "imports" in parts:
        if carry_site or mode == "gpu":
            ok &= check.part("imports", import_check(check, site))
        else:
            check.part("imports", {"skipped": f"the wheels are for Python {TARGET_PY}, this is "
                                              f"{sys.version_info.major}.{sys.version_info.minor}"})
    if "pytest" in parts:
        ok &= check.part("pytest", pytest_part(check, collect_only=dry, on_cpu=mode == "rehearse"))
    # a wandb that does not import there costs the W&B backend, not the loop's figures
    wandb = str(check.summary["parts"].get("imports", {}).get("modules", {}).get("wandb", ""))
    fallback = ["logger=local"] if wandb.startswith("FAILED") else []
    for name in LOOPS:
        if name in parts:
            # the dry run parses the GPU commands themselves; the rehearsal runs the tiny loop in
            # the
            # smoke test's shape on CPU and parses the 0.52B one (many minutes on CPU)
            rehearse = mode == "rehearse" and name == "tiny"
            compose_only = dry or (mode == "rehearse" and not rehearse)
            ok &= check.part(name, loop_part(check, name, work, compose_only, rehearse, fallback))
    if "memory" in parts:
        ok &= check.part("memory", memory_part(check, dry or mode == "rehearse"))
    check.summary["ok"] = ok
    check.save()
    check.say(
        f"[gpu_check] {'all parts ok' if ok else 'SOME PARTS FAILED'} ({mode}, "
        f"{check.summary['wall_s']} s); summary {out / 'gpu_check.json'}, log "
        f"{out / 'gpu_check.log'}"
    )
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


# --- helpers run as child processes ------------------------------------------------------------


def loop_child(stats: str, overrides: list[str]) -> None:
    """`python -m skyexp <overrides>` in this process, then its peak memory written to `stats`
    (torch.cuda.max_memory_allocated is per process, so the run cannot be a grandchild)."""
    import resource

    import torch

    sys.argv = ["skyexp", *overrides]
    from skyexp.__main__ import main

    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        Path(stats).write_text(
            json.dumps(
                {
                    "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)
                    if cuda
                    else None,
                    "peak_gpu_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3)
                    if cuda
                    else None,
                    "peak_rss_gib": round(
                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3
                    ),
                }
            )
        )
    sys.exit(code)


IMPORTS = ["hydra", "omegaconf", "math_verify", "wandb", "datasets", "skyexp.train"]


def imports_child(site: str) -> None:
    """Import IMPORTS; check each wheel installed in `site` against the versions this interpreter
    finds (a carried package may need a newer one than the image has: `prepare --also NAME`)."""
    from importlib import import_module, metadata

    from packaging.requirements import Requirement

    modules = {}
    for m in IMPORTS:
        try:
            modules[m] = getattr(import_module(m), "__version__", "ok")
        except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the check
            modules[m] = f"FAILED: {e!r}"[:400]
    conflicts = []
    for dist in metadata.distributions(path=[site]):
        for line in dist.requires or []:
            r = Requirement(line)
            if r.marker and not r.marker.evaluate({"extra": ""}):
                continue
            try:
                found = metadata.version(r.name)
            except metadata.PackageNotFoundError:
                conflicts.append(f"{dist.metadata['Name']} needs {r}: not installed")
                continue
            if not r.specifier.contains(found, prereleases=True):
                conflicts.append(f"{dist.metadata['Name']} needs {r}: found {found}")
    print("RESULT " + json.dumps({"modules": modules, "conflicts": conflicts}))


def validate_child(overrides: list[str]) -> None:
    """Compose conf/train.yaml with the overrides and validate it against the typed schema, as
    `python -m skyexp` does before anything loads (`--cfg job` alone skips the typed checks)."""
    from hydra import compose, initialize_config_dir

    from skyexp.cli import register_schema
    from skyexp.config import to_typed

    register_schema()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        to_typed(compose(config_name="train", overrides=overrides))
    print("valid:", " ".join(overrides))


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "_loop":
        loop_child(sys.argv[2], sys.argv[3:])
    if len(sys.argv) == 3 and sys.argv[1] == "_imports":
        imports_child(sys.argv[2])
        return 0
    if len(sys.argv) == 3 and sys.argv[1] == "_validate":
        validate_child(json.loads(sys.argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "prepare", help="download the wheels the GPU image lacks (here, with network)"
    )
    p.add_argument("--wheels", default=str(DEFAULT_WHEELS))
    p.add_argument(
        "--also",
        nargs="*",
        default=ALSO,
        help=f"carry these though the image has them (default: {' '.join(ALSO)})",
    )
    r = sub.add_parser("run", help="the check (on the GPU machine); a dry run without CUDA")
    r.add_argument("--wheels", default=str(DEFAULT_WHEELS))
    r.add_argument(
        "--out",
        default=os.environ.get("OUT", ""),
        help="summary, log, junit xml, metrics (default: $OUT or a temp dir)",
    )
    r.add_argument(
        "--budget",
        type=float,
        default=BUDGET_S,
        help="seconds for the whole run (parts are cut to fit)",
    )
    r.add_argument(
        "--parts",
        default="",
        help="comma list of install,imports,pytest,tiny,qwen2_0p5b,memory (default: all)",
    )
    r.add_argument(
        "--dry-run", action="store_true", help="install + parse checks only, even with CUDA"
    )
    r.add_argument(
        "--rehearse",
        action="store_true",
        help="without CUDA: run the gpu tests and the tiny loop on CPU",
    )
    r.add_argument(
        "--keep-work",
        action="store_true",
        help="keep the work directory (site, cache, run outputs)",
    )
    args = ap.parse_args()
    return prepare(Path(args.wheels), args.also) if args.command == "prepare" else run(args)


if __name__ == "__main__":
    sys.exit(main())
