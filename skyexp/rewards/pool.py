"""Scoring processes that run math-verify with hard per-item time limits.

math-verify's own timeouts use signal.alarm, which works only in a process's main thread: each
worker is a spawned process, so they work there and give the soft limit. Code stuck in C (a huge
integer power) ignores signals, so the parent also enforces a hard deadline per item and kills
and replaces the worker that passes it. Workers run with an address-space cap.

Each worker has its own pipe and takes one item at a time, so a worker that hangs, crashes or is
killed (by the OOM killer, or by the SIGTERM that SLURM and torchrun send to a whole process
group) costs only its own item, scored 0 and counted, and is replaced alone. (A
multiprocessing.Pool shares one task queue whose lock an idle worker holds while it waits: a
worker killed then takes the lock with it and the pool never hands out work or shuts down again.)
Workers ignore SIGINT and SIGTERM (the trainer stops them, after its own checkpoint) and exit
when the trainer's end of the pipe closes, so they never outlive it.

Why not a pool library: pebble 5.2.3's ProcessPool (per-task timeouts, worker replacement) was
run against this module's tests and timings. With the same initializer it would replace about
40 of these lines, but (1) an idle worker that dies (SIGKILL, the OOM killer) with no task
running marks the whole pool broken ("All workers expired"): every later call raises; (2) it
stops a timed-out worker with SIGTERM and waits 3 s before SIGKILL, and the workers must ignore
SIGTERM (see above): two hangs at a 1 s limit took 10.4 s against 4.1 s here; (3) its workers share
one task channel behind a cross-process lock. Both pools scored 10 pathological answers alike
(3 timeouts, 3 errors, 2.3-2.6 s) and 200 ordinary ones in 0.5-1.2 s.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
from multiprocessing.connection import wait

log = logging.getLogger(__name__)


def _init_worker(memory_mb: int) -> None:
    import os
    import resource
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ValueError, OSError):  # some platforms refuse; the hard deadline still holds
            pass
    import math_verify  # noqa: F401  (import once, before the first item's clock starts)


def _serve(conn, target, memory_mb: int) -> None:
    """A worker's loop: (pred, gold, soft_timeout) in, (score, status) out, until the pipe
    closes."""
    _init_worker(memory_mb)
    conn.send("ready")
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):  # the trainer is gone
            return
        conn.send(target(*item))


class _SoftTimeouts(logging.Handler):
    """Counts math-verify's own timeouts. math-verify catches its signal timeout, logs "Timeout
    during parsing/comparison" and returns an empty parse / False, so without this a timeout would
    look like a wrong answer (status ok) and never reach reward/timeouts."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("Timeout during"):
            self.count += 1


_SOFT: _SoftTimeouts | None = None


def _soft_timeouts() -> _SoftTimeouts:
    global _SOFT
    if _SOFT is None:
        _SOFT = _SoftTimeouts()
        logging.getLogger("math_verify").addHandler(_SOFT)  # also keeps its warnings off stderr
    return _SOFT


def verify_one(pred: str, gold: str, soft_timeout: int) -> tuple[float, str]:
    """math-verify equivalence of two answers (without \\boxed{}). Runs inside a pool worker.
    A soft timeout (parse or compare) that leaves the answer unmatched is reported as a timeout."""
    from math_verify import parse, verify

    soft = _soft_timeouts()
    before = soft.count
    try:
        g = parse(f"\\boxed{{{gold}}}", parsing_timeout=soft_timeout)
        p = parse(f"\\boxed{{{pred}}}", parsing_timeout=soft_timeout)
        score = 1.0 if g and p and verify(g, p, timeout_seconds=soft_timeout) else 0.0
    except BaseException:  # MemoryError, RecursionError, sympy internals: never crash the step
        return 0.0, "error"
    return score, ("timeout" if score == 0.0 and soft.count > before else "ok")


class _Worker:
    def __init__(self, ctx, target, memory_mb: int):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, target, memory_mb), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.item: int | None = None  # index of the item it is scoring
        self.deadline = 0.0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(timeout=10)
        self.conn.close()


class ScoringPool:
    STARTUP_S = 120.0  # spawning and importing sympy; minutes only on a broken install

    def __init__(self, workers: int, timeout_s: float, memory_mb: int = 2048, target=verify_one):
        self.timeout_s, self.memory_mb, self.target = timeout_s, memory_mb, target
        # parse + parse + verify fit in the hard limit
        self.soft_timeout = max(1, int(timeout_s // 3))
        self.restarts = 0
        self._ctx = mp.get_context("spawn")
        self._workers = [_Worker(self._ctx, target, memory_mb) for _ in range(workers)]

    def _replace(self, i: int) -> None:
        self.restarts += 1
        self._workers[i].kill()
        self._workers[i] = _Worker(self._ctx, self.target, self.memory_mb)

    def verify(self, items: list[tuple[str, str]]) -> list[tuple[float, str]]:
        """[(pred, gold)] -> [(score, status)], status in ok | timeout | error. Each item has
        timeout_s (plus a second for the round trip) from when a worker takes it."""
        results: list[tuple[float, str] | None] = [None] * len(items)
        # items past the hard deadline (their worker killed); other timeouts are math-verify's own
        killed = 0
        todo = list(range(len(items)))[::-1]
        startup = time.monotonic() + self.STARTUP_S
        while any(r is None for r in results):
            for i, w in enumerate(self._workers):  # hand out work to idle, ready workers
                if w.ready and w.item is None and todo:
                    try:
                        w.conn.send((*items[todo[-1]], self.soft_timeout))
                    except OSError:  # it died while idle: the item waits for another worker
                        self._replace(i)
                        continue
                    w.item, w.deadline = todo.pop(), time.monotonic() + self.timeout_s + 1.0
            waits = [w.deadline for w in self._workers if w.item is not None] + [startup]
            ready = wait(
                [w.conn for w in self._workers], timeout=max(0.0, min(waits) - time.monotonic())
            )
            for i, w in enumerate(self._workers):
                if w.conn in ready:
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):  # it died: its item (if any) is an error
                        if w.item is not None:
                            results[w.item] = (0.0, "error")
                        self._replace(i)
                        continue
                    if msg == "ready":
                        w.ready = True
                    else:
                        results[w.item], w.item = msg, None
                # hung, maybe in C: kill it
                elif w.item is not None and time.monotonic() > w.deadline:
                    results[w.item], killed = (0.0, "timeout"), killed + 1
                    self._replace(i)
            if time.monotonic() > startup and not any(w.ready for w in self._workers):
                raise RuntimeError(
                    f"scoring workers did not start in {self.STARTUP_S:.0f}s (is math-verify "
                    "installed?)"
                )
        timeouts = sum(r[1] == "timeout" for r in results)  # type: ignore[index]
        if timeouts:
            log.warning(
                "scoring: %d of %d items timed out: %d at math-verify's %ds parse/compare limit, "
                "%d killed at "
                "the %.1fs hard limit (reward.timeout_s)",
                timeouts,
                len(items),
                timeouts - killed,
                self.soft_timeout,
                killed,
                self.timeout_s,
            )
        return results  # type: ignore[return-value]

    def close(self) -> None:
        for w in self._workers:
            w.kill()
        self._workers = []
