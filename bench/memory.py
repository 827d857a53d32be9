"""Peak memory and time of one RL update against response length: skyexp's chunked lm head (new),
the full-logits path (old, trainer.logprob_chunk=0) and TRL's GRPOTrainer log-prob path.

    python bench/memory.py                       # CPU: 1k..16k, table + PNG + JSON in
bench/results/
    python bench/memory.py --device cuda --hidden 896 --layers 24 --dtype bfloat16 --lengths 8192
16384 32768

Shape (CPU default): a narrow Qwen2 with Qwen2.5's 151,936-token vocabulary, hidden 128, 2 layers,
tied embeddings, float32; one prompt of 64 tokens and one response of L tokens; AdamW. Each case
runs in a fresh subprocess, so peaks do not mix: peak RSS (ru_maxrss) on CPU,
torch.cuda.max_memory_allocated on GPU. Cases run interleaved (new, old, trl at each length),
so machine load hits them alike.

- new: skyexp.rl.update.rl_update with trainer.logprob_chunk=1024 (default settings otherwise).
- old: the same with logprob_chunk=0: full [tokens, V] logits, skyexp.algos.losses.token_logprobs.
- spS (--sp S): sequence parallelism. Both cases run under torchrun with S ranks, FSDP2 over
  them, trainer.padding_free=true: sp1 is S data-parallel ranks each updating the row alone,
  spS one row split over the S ranks (trainer.sp_size=S; skyexp.model.sequence_parallel). Same
  sharding and optimizer state per rank (AdamW's moments made before the baseline, as in every
  step after the first), so the per-rank peak above the loaded baseline differs by what SP
  changes: the activations. Prints each rank's peak; the table takes the larger. Two
  figures: peak RSS (ru_maxrss, fragmentation of the heap included) and the peak of live heap
  bytes (LiveHeap: glibc's count of what is allocated, sampled each millisecond).
- trl: trl.trainer.utils.add_fused_lm_head(model, outputs=("log_probs", "entropy")) then
  GRPOTrainer._get_per_token_logps_and_entropies(..., compute_entropy=True) -- exactly the calls
  GRPOTrainer.__init__ and GRPOTrainer._compute_loss make (TRL 1.16: its own chunked fused head,
  _ChunkedLogProbFunction) -- then the clipped GRPO surrogate, token mean, backward, AdamW step.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPT = 64


def build_model(a: argparse.Namespace, max_len: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=151936,
        hidden_size=a.hidden,
        intermediate_size=a.hidden * 2,
        num_hidden_layers=a.layers,
        num_attention_heads=max(1, a.hidden // 64),
        num_key_value_heads=max(1, a.hidden // 64),
        max_position_embeddings=max_len,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(getattr(torch, a.dtype)).to(a.device)
    if a.checkpointing:
        model.gradient_checkpointing_enable()
    return model.train()


def make_rollout(length: int):
    from skyexp.model.layout import pack
    from skyexp.records import Rollout

    g = torch.Generator().manual_seed(length)
    prompt = torch.randint(0, 151936, (PROMPT,), generator=g).tolist()
    response = torch.randint(0, 151936, (length,), generator=g).tolist()
    seq, attn, rm, plen = pack([prompt], [response], 0)
    lp = -torch.rand(rm.shape, generator=g) * 0.1  # near the policy's: ratios not clamped
    return Rollout(
        sequences=seq,
        attention_mask=attn,
        response_mask=rm,
        logprobs=lp,
        truncated=torch.zeros(1, dtype=torch.bool),
        prompt_len=plen,
        n=1,
        temperature=1.0,
        entropy=torch.ones(rm.shape),
    )


def sp_update(a: argparse.Namespace, model, ro) -> None:
    """One update of the row under torchrun (see the module docstring, spS)."""
    from skyexp import distributed
    from skyexp.config import Config
    from skyexp.config.algorithm import build_algorithm
    from skyexp.model.layout import ForwardSettings
    from skyexp.rl.objective import LossSpec
    from skyexp.rl.update import UpdateBatch, UpdateSettings, rl_update

    d = a.dist
    spec = LossSpec.of(build_algorithm(Config()), 0.0)
    batch = UpdateBatch(ro, torch.ones(1), torch.ones(1))
    fwd = ForwardSettings(1, d.device, logprob_chunk=a.chunk, padding_free=True,
                          sp_size=a.sp_size)
    rl_update(model, a.opt, batch, spec, UpdateSettings(fwd, 1.0, d.world_size))
    distributed.barrier()


def skyexp_update(model, ro, device, chunk: int) -> None:
    from skyexp.config import Config
    from skyexp.config.algorithm import build_algorithm
    from skyexp.model.layout import ForwardSettings
    from skyexp.rl.objective import LossSpec
    from skyexp.rl.update import UpdateBatch, UpdateSettings, rl_update

    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    spec = LossSpec.of(build_algorithm(Config()), 0.0)
    batch = UpdateBatch(ro, torch.ones(1), torch.ones(1))
    rl_update(
        model,
        opt,
        batch,
        spec,
        UpdateSettings(ForwardSettings(1, device, logprob_chunk=chunk), 1.0),
    )


def trl_update(model, ro, device) -> None:
    from trl.trainer.grpo_trainer import GRPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    class Stub:  # the attributes _get_per_token_logps_and_entropies reads
        class accelerator:  # noqa: N801
            autocast = staticmethod(nullcontext)
            is_main_process = True

    add_fused_lm_head(model, temperature=ro.temperature, outputs=("log_probs", "entropy"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ids, attn = ro.sequences.to(device), ro.attention_mask.to(device)
    keep = ro.response_mask.shape[1]
    logps, ent, _ = GRPOTrainer._get_per_token_logps_and_entropies(
        Stub(), model, ids, attn, keep, compute_entropy=True
    )
    mask, old, adv = (
        ro.response_mask.to(device),
        ro.logprobs.to(device),
        torch.ones(1, 1, device=device),
    )
    coef = torch.exp(logps - old)
    per_token = -torch.min(coef * adv, torch.clamp(coef, 0.8, 1.2) * adv)
    ((per_token * mask).sum() / mask.sum()).backward()
    opt.step()


class LiveHeap:
    """Peak bytes malloc has handed out and not taken back (glibc mallinfo2: heap in use +
    mmapped blocks), sampled every millisecond by a thread while torch runs without the GIL:
    the live memory without what the heap's fragmentation keeps resident (which ru_maxrss
    counts). None where the C library has no mallinfo2."""

    def __init__(self) -> None:
        import ctypes
        import threading

        class Info(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                "uordblks", "fordblks", "keepcost")]

        try:
            fn = ctypes.CDLL("libc.so.6").mallinfo2
        except (OSError, AttributeError):
            self.fn = None
            return
        fn.restype = Info
        self.fn, self.peak, self.stop = fn, 0, threading.Event()
        self.base = self.now()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def now(self) -> int:
        m = self.fn()
        return m.uordblks + m.hblkhd

    def _run(self) -> None:
        while not self.stop.wait(0.001):
            self.peak = max(self.peak, self.now())

    def above_gb(self) -> float | None:
        if self.fn is None:
            return None
        self.stop.set()
        self.thread.join()
        return round((self.peak - self.base) / 2**30, 3)


def one(a: argparse.Namespace) -> dict:
    """The case a.path at a.length, in this process; returns its measurements."""
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    model = build_model(a, PROMPT + a.length + 8)
    ro = make_rollout(a.length)
    if a.path.startswith("sp"):
        from skyexp import distributed
        from skyexp.model import sequence_parallel

        a.sp_size = int(a.path[2:])
        a.dist = distributed.setup(a.device, a.threads, sp_size=a.sp_size)
        sequence_parallel.enable(model, a.sp_size, "sdpa")
        distributed.shard(model, a.dist)
        # AdamW's moments exist before the baseline, as in any step after the first: the peak
        # above it is what the update adds (activations, gradients, the head's buffers)
        a.opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        a.opt.step()
        a.opt.zero_grad(set_to_none=True)
        distributed.barrier()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    live = LiveHeap() if a.path.startswith("sp") else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**30
    t0 = time.perf_counter()
    if a.path.startswith("sp"):
        sp_update(a, model, ro)
    elif a.path == "trl":
        trl_update(model, ro, device)
    else:
        skyexp_update(model, ro, device, a.chunk if a.path == "new" else 0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    out = {
        "path": a.path,
        "length": a.length,
        "peak_gb": round(peak, 3),
        "before_gb": round(before, 3),
        "time_s": round(secs, 2),
    }
    if live is not None:
        out["live_above_gb"] = live.above_gb()
    if a.path.startswith("sp"):  # every rank's, in rank order, on rank 0's last line
        from skyexp import distributed

        ranks = distributed.all_gather_objects(out)
        worst = max(ranks, key=lambda r: r["peak_gb"] - r["before_gb"])
        out = {**worst, "above_gb": round(worst["peak_gb"] - worst["before_gb"], 3),
               "live_above_gb": max(r.get("live_above_gb") or 0.0 for r in ranks),
               "time_s": max(r["time_s"] for r in ranks), "ranks": ranks}
        distributed.teardown()
    return out


def run_case(a: argparse.Namespace, path: str, length: int) -> dict:
    launcher = [sys.executable]
    if path.startswith("sp"):
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.sp}"]
    args = [
        *launcher,
        __file__,
        "--one",
        path,
        str(length),
        "--device",
        a.device,
        "--hidden",
        str(a.hidden),
        "--layers",
        str(a.layers),
        "--dtype",
        a.dtype,
        "--threads",
        str(a.threads),
        "--chunk",
        str(a.chunk),
    ]
    args += ["--checkpointing"] if a.checkpointing else []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(a.threads)}
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env)
    if r.returncode != 0:
        return {
            "path": path,
            "length": length,
            "error": r.stderr.strip().splitlines()[-1][:200] if r.stderr else f"rc {r.returncode}",
        }
    lines = [x for x in r.stdout.strip().splitlines() if x.startswith("{")]
    return json.loads(lines[0])


def table(rows: list[dict], lengths: list[int], paths: list[str]) -> str:
    by = {(r["path"], r["length"]): r for r in rows}
    head = (
        "| response tokens | "
        + " | ".join(f"{p}: peak GB (s)" for p in paths)
        + " | old / new time |"
    )
    lines = [head, "|" + "---|" * (len(paths) + 2)]
    for n in lengths:
        cells = []
        for p in paths:
            r = by.get((p, n), {})
            cells.append(
                f"{r['peak_gb']:.2f} ({r['time_s']:.1f})"
                if "peak_gb" in r
                else r.get("skipped", r.get("error", "-"))
            )
        new, old = by.get(("new", n), {}), by.get(("old", n), {})
        ratio = (
            f"{old['time_s'] / new['time_s']:.2f}" if "time_s" in new and "time_s" in old else "-"
        )
        lines.append(f"| {n:,} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def sp_table(rows: list[dict], lengths: list[int], paths: list[str]) -> str:
    """Per-rank peak above the loaded baseline and the update's time, sp1 against spS."""
    by = {(r["path"], r["length"]): r for r in rows}
    one, many = paths
    lines = [f"| response tokens | {one}: GB above baseline, RSS / live (s) | {many}: same "
             f"| {many} / {one} memory, RSS / live | {many} / {one} time |",
             "|---|---|---|---|---|"]
    for n in lengths:
        a, b = by.get((one, n), {}), by.get((many, n), {})
        cells = [f"{r['above_gb']:.3f} / {r.get('live_above_gb') or 0:.3f} ({r['time_s']:.1f})"
                 if "above_gb" in r else r.get("error", "-") for r in (a, b)]
        ok = "above_gb" in a and "above_gb" in b
        mem = f"{b['above_gb'] / a['above_gb']:.2f}" if ok else "-"
        if ok and a.get("live_above_gb"):
            mem += f" / {b['live_above_gb'] / a['live_above_gb']:.2f}"
        tim = f"{b['time_s'] / a['time_s']:.2f}" if ok else "-"
        lines.append(f"| {n:,} | {cells[0]} | {cells[1]} | {mem} | {tim} |")
    return "\n".join(lines)


def plot(rows: list[dict], paths: list[str], out: Path, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for p in paths:
        pts = sorted((r["length"], r["peak_gb"]) for r in rows if r["path"] == p and "peak_gb" in r)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=p)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("response tokens")
    ax.set_ylabel(ylabel)
    ax.set_title("one RL update, Qwen2 vocab 151,936")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--paths", nargs="+", default=["new", "old", "trl"])
    ap.add_argument(
        "--old-max", type=int, default=4096, help="longest response the old path runs (memory)"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--tag", default="")
    ap.add_argument("--sp", type=int, default=0,
                    help="S > 1: sp1 (S data-parallel ranks) against spS (one row over S ranks)")
    ap.add_argument("--one", nargs=2, metavar=("PATH", "LENGTH"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        a.path, a.length = a.one[0], int(a.one[1])
        result = one(a)
        if int(os.environ.get("RANK", 0)) == 0:
            print(json.dumps(result))
        return
    if a.sp > 1:
        a.paths = ["sp1", f"sp{a.sp}"]
    rows = []
    for n in a.lengths:  # interleaved: every path at one length before the next length
        for p in a.paths:
            if p == "old" and n > a.old_max:
                rows.append(
                    {"path": p, "length": n, "skipped": f"not run (> {a.old_max}: ~3 MB/token)"}
                )
                continue
            rows.append(run_case(a, p, n))
            print(json.dumps(rows[-1]), flush=True)
    print(sp_table(rows, a.lengths, a.paths) if a.sp > 1 else table(rows, a.lengths, a.paths))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    stem = f"memory-{a.device}{f'-sp{a.sp}' if a.sp > 1 else ''}{'-' + a.tag if a.tag else ''}"
    meta = {k: v for k, v in vars(a).items() if k not in ("one",)}
    (out / f"{stem}.json").write_text(
        json.dumps({"settings": meta, "torch": torch.__version__, "rows": rows}, indent=1)
    )
    plot(
        rows,
        a.paths,
        out / f"{stem}.png",
        "peak RSS (GB)" if a.device == "cpu" else "peak allocated (GB)",
    )
    print(f"wrote {out / stem}.json and .png")


if __name__ == "__main__":
    main()
