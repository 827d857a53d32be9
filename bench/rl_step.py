"""RL step time of skyexp against TRL's GRPOTrainer on the same model and work, side by side.

    python bench/rl_step.py            # tiny + 25.9M model, scaling curves (6 min on 2 idle cores)
    python bench/rl_step.py --quick    # tiny model only, a few steps: a CI-sized check

Both frameworks load one directory of weights (a Qwen2 built by skyexp.model.loading), draw the same
arith prompts in the same order, sample `samples` responses of at most `max_new_tokens` tokens
per prompt at temperature 1, score them with the same function (bench/common.py: ParityReward),
and take one optimizer step of the clipped GRPO loss without KL, fp32, on `--threads` threads.
TRL runs in its fastest CPU setting (no gradient checkpointing, fp32). Steps are interleaved
(a TRL step, then a skyexp step, ...) so both see the same machine load; warm-up steps are
dropped; medians and spreads are over the measured steps.

MFU: 2N FLOPs per token to generate and 6N per token to train (N = weights in matrix products;
tokens = prompt + response tokens of the step), divided by phase time and by the fp32 matmul
peak measured in this run. Results go to bench/results/<date>-<host>.json (+ .png).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# this checkout's skyexp (not another installed copy) and the bench helpers
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import torch  # noqa: E402
from common import ROOT, Work, load_average, matmul_peak, step_flops, summarise  # noqa: E402

FULL = dict(
    models=["tiny", "25m"],
    warmup={"tiny": 2, "small": 1, "25m": 1},
    steps={"tiny": 8, "small": 5, "25m": 5},
    lengths=[32, 64, 128, 256],
    samples=[4, 8, 16],
    sizes=["tiny", "small", "25m"],
    scale_warmup=1,
    scale_steps=3,
)
QUICK = dict(
    models=["tiny"],
    warmup={"tiny": 1},
    steps={"tiny": 3},
    lengths=[32, 64],
    samples=[4, 8],
    sizes=["tiny"],
    scale_warmup=1,
    scale_steps=2,
)
METRICS = [
    "step_s",
    "gen_s",
    "score_s",
    "update_s",
    "gen_tok_s",
    "update_tok_s",
    "mfu_gen",
    "mfu_update",
    "mfu_step",
    "mfu_step_distinct",
]


def derive(rec: dict[str, float], n_params: int, peak: float, n: int) -> dict[str, float]:
    """Rates of one measured step: tokens/s per phase, MFU per phase (peak in GFLOP/s).

    MFU counts every row's prompt and response tokens (the issue's count, what a framework that
    runs each row on its own executes). `mfu_step_distinct` counts each prompt once per group
    (n samples): the FLOPs skyexp executes, since it shares prompts in generation and update."""
    gen_f, upd_f = step_flops(n_params, rec["seq_tokens"])
    distinct = rec["gen_tokens"] + (rec["seq_tokens"] - rec["gen_tokens"]) / n
    out = dict(rec)
    out["mfu_step_distinct"] = sum(step_flops(n_params, distinct)) / rec["step_s"] / (peak * 1e9)
    out["gen_tok_s"] = rec["gen_tokens"] / rec["gen_s"]
    out["update_tok_s"] = rec["seq_tokens"] / rec["update_s"]
    out["mfu_gen"] = gen_f / rec["gen_s"] / (peak * 1e9)
    out["mfu_update"] = upd_f / rec["update_s"] / (peak * 1e9)
    out["mfu_step"] = (gen_f + upd_f) / rec["step_s"] / (peak * 1e9)
    return out


def measure(
    work: Work, warmup: int, steps: int, threads: int, cache_dir: str, peak: float
) -> dict[str, Any]:
    """Interleaved steps of both frameworks on `work` (a TRL step, then a skyexp step, ...);
    summaries over the steps after warm-up."""
    from sides import SkyexpSide, TRLSide

    from skyexp.model.loading import load_tokenizer

    load_before = load_average()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        sky = SkyexpSide(work, cache_dir, threads, Path(tmp) / "skyexp")
        tok = load_tokenizer(
            sky.path, sky.cfg.model
        )  # TRL's own copy: it may change padding settings
        trl = TRLSide(
            work, sky.path, sky.cfg, tok, warmup + steps, threads, Path(tmp) / "trl", after=sky.step
        )
        trl.train()
    result: dict[str, Any] = {
        "work": asdict(work),
        "params": sky.n_params,
        "warmup": warmup,
        "load_before": load_before,
        "load_after": load_average(),
        "wall_s": time.perf_counter() - t0,
        "same_prompts": sky.prompts == trl.prompts,
        "trl_checkpointing": trl.checkpointing,
    }
    for side in (sky, trl):
        recs = [derive(r, side.n_params, peak, work.samples) for r in side.steps[warmup:]]
        result[side.name] = {"steps": recs, **{k: summarise([r[k] for r in recs]) for k in METRICS}}
    pairs = [
        t["step_s"] / s["step_s"] for s, t in zip(result["skyexp"]["steps"], result["trl"]["steps"])
    ]
    result["speedup"] = result["trl"]["step_s"]["median"] / result["skyexp"]["step_s"]["median"]
    result["speedup_pairs"] = summarise(pairs)
    del sky, trl
    gc.collect()
    return result


def scaling(
    plan: dict[str, Any],
    main: dict[str, dict],
    threads: int,
    cache_dir: str,
    peak: float,
    base: Work,
) -> list[dict]:
    """Step time as response length, samples per prompt and model size grow (tiny model for the
    first two); points already measured by the main runs are reused."""
    points: list[tuple[str, Work]] = [
        ("length", replace(base, max_new_tokens=n)) for n in plan["lengths"]
    ]
    points += [("samples", replace(base, samples=n)) for n in plan["samples"]]
    points += [("size", replace(base, model=m)) for m in plan["sizes"]]
    out = []
    for axis, w in points:
        res = main.get(w.label()) or measure(
            w, plan["scale_warmup"], plan["scale_steps"], threads, cache_dir, peak
        )
        print(f"  scaling {axis:8s} {w.label():22s} " + _ratio_line(res), flush=True)
        out.append(
            {
                "axis": axis,
                "label": w.label(),
                "work": asdict(w),
                "params": res["params"],
                **{f: {k: res[f][k]["median"] for k in METRICS} for f in ("skyexp", "trl")},
                "speedup": res["speedup"],
            }
        )
    return out


def _ratio_line(r: dict[str, Any]) -> str:
    s, t = r["skyexp"]["step_s"], r["trl"]["step_s"]
    return f"skyexp {s['median']:.3f}s  trl {t['median']:.3f}s  speed-up {r['speedup']:.2f}x"


def table(main: dict[str, dict]) -> str:
    """The main runs as a Markdown table (medians over the measured steps)."""
    lines = [
        "| work | framework | step s, median [min-max] | gen s | update s | gen tok/s | update "
        "tok/s "
        "| MFU gen | MFU update | MFU step (distinct) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in main.items():
        for f in ("skyexp", "trl"):
            m = {k: v["median"] for k, v in r[f].items() if k != "steps"}
            st = r[f]["step_s"]
            lines.append(
                f"| {label} | {f} | {st['median']:.3f} [{st['min']:.3f}-{st['max']:.3f}] | "
                f"{m['gen_s']:.3f} "
                f"| {m['update_s']:.3f} | {m['gen_tok_s']:.0f} | {m['update_tok_s']:.0f} | "
                f"{m['mfu_gen']:.1%} "
                f"| {m['mfu_update']:.1%} | {m['mfu_step']:.1%} ({m['mfu_step_distinct']:.1%}) |"
            )
    lines.append("")
    for label, r in main.items():
        sp = r["speedup_pairs"]
        lines.append(
            f"- {label}: TRL / skyexp median step {r['speedup']:.2f}x (per interleaved pair "
            f"{sp['median']:.2f}x, "
            f"{sp['min']:.2f}-{sp['max']:.2f}); load average {r['load_before']} -> "
            f"{r['load_after']}"
        )
    return "\n".join(lines)


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_def = [
        ("length", "max new tokens", lambda p: p["work"]["max_new_tokens"]),
        ("samples", "samples per prompt", lambda p: p["work"]["samples"]),
        ("size", "parameters (matmul)", lambda p: p["params"]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (axis, xlabel, xval) in zip(axes, axes_def):
        pts = sorted((p for p in points if p["axis"] == axis), key=xval)
        for f, style in (("skyexp", "o-"), ("trl", "s--")):
            ax.plot([xval(p) for p in pts], [p[f]["step_s"] for p in pts], style, label=f)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("median step time (s)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("RL step time: skyexp vs TRL GRPOTrainer (fp32 CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model only, few steps (CI-sized)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument(
        "--models", default="", help="comma list of bench/common.py MODELS (default: by mode)"
    )
    p.add_argument(
        "--steps", type=int, default=0, help="measured steps per main run (default: by mode)"
    )
    p.add_argument(
        "--warmup", type=int, default=-1, help="warm-up steps per main run (default: by mode)"
    )
    p.add_argument(
        "--lengths", default="", help="comma list of response lengths for the scaling curve"
    )
    p.add_argument(
        "--scale-samples", default="", help="comma list of samples per prompt for the scaling curve"
    )
    p.add_argument("--no-scaling", action="store_true")
    p.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    p.add_argument(
        "--cache-dir", default="", help="where the models are built (default: skyexp's cache)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse(argv)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(a.threads)
    plan = dict(QUICK if a.quick else FULL)
    if a.models:
        plan["models"] = a.models.split(",")
    if a.lengths:
        plan["lengths"] = [int(x) for x in a.lengths.split(",")]
    if a.scale_samples:
        plan["samples"] = [int(x) for x in a.scale_samples.split(",")]
    base = Work(prompts=a.prompts, samples=a.samples, max_new_tokens=a.max_new_tokens)
    started, load_start = datetime.datetime.now(), load_average()
    print(
        f"load average {load_start}; measuring the fp32 matmul peak on {a.threads} threads",
        flush=True,
    )
    peak_start = matmul_peak()
    print(f"  peak {peak_start['peak']:.1f} GFLOP/s", flush=True)
    main_runs: dict[str, dict] = {}
    for m in plan["models"]:
        w = replace(base, model=m)
        warm = a.warmup if a.warmup >= 0 else plan["warmup"].get(m, 1)
        steps = a.steps or plan["steps"].get(m, 5)
        print(
            f"measuring {w.label()}: {warm} warm-up + {steps} measured steps per framework",
            flush=True,
        )
        main_runs[w.label()] = measure(w, warm, steps, a.threads, a.cache_dir, peak_start["peak"])
        print("  " + _ratio_line(main_runs[w.label()]), flush=True)
    points = (
        []
        if a.no_scaling
        else scaling(plan, main_runs, a.threads, a.cache_dir, peak_start["peak"], base)
    )
    peak_end = matmul_peak()
    peak = max(peak_start["peak"], peak_end["peak"])
    for r in main_runs.values():  # MFU against the better of the two peak measurements
        for f in ("skyexp", "trl"):
            r[f]["steps"] = [
                derive(s, r["params"], peak, r["work"]["samples"]) for s in r[f]["steps"]
            ]
            r[f].update({k: summarise([s[k] for s in r[f]["steps"]]) for k in METRICS})
    host = platform.node() or "host"
    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{started:%Y-%m-%d}-{host}"
    result = {
        "meta": {
            "date": started.isoformat(timespec="seconds"),
            "host": host,
            "threads": a.threads,
            "quick": a.quick,
            "cpu": _cpu_name(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": _version("trl"),
            "python": platform.python_version(),
            "command": " ".join(sys.argv),
            "load_start": load_start,
            "load_end": load_average(),
            "wall_s": (datetime.datetime.now() - started).total_seconds(),
        },
        "peak_gflops": {"start": peak_start, "end": peak_end, "used": peak},
        "main": main_runs,
        "scaling": points,
    }
    print("\n" + table(main_runs))
    if points:
        plot(points, stem.with_suffix(".png"))
        result["plot"] = str(stem.with_suffix(".png"))
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    print(f"\npeak {peak:.1f} GFLOP/s; results in {stem.with_suffix('.json')}")
    return result


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
