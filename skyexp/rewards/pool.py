"""A spawned process pool that runs math-verify with hard per-item time limits.

math-verify's own timeouts use signal.alarm, which works only in a process's main thread: each
pool worker is a spawned process, so they work there and give the soft limit. Code stuck in C
(a huge integer power) ignores signals, so the parent also enforces a hard deadline and kills
and replaces the pool when it passes. Workers run with an address-space cap.

Scheduling: pass 1 sends every item and waits until a batch deadline sized for the whole batch.
If it passes, the pool is replaced and the items still unfinished go through pass 2 in chunks of
at most `workers` items, one per worker, each chunk with a per-item deadline: only the items that
hang on their own are scored as timeouts.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import time

log = logging.getLogger(__name__)


def _init_worker(memory_mb: int) -> None:
    import os
    import resource

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ValueError, OSError):  # some platforms refuse; the hard deadline still holds
            pass
    import math_verify  # noqa: F401  (import once, before the first item's clock starts)


def _warm() -> bool:
    return True


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


class ScoringPool:
    def __init__(self, workers: int, timeout_s: float, memory_mb: int = 2048, target=verify_one):
        self.workers, self.timeout_s, self.memory_mb, self.target = workers, timeout_s, memory_mb, target
        self.soft_timeout = max(1, int(timeout_s // 3))  # parse + parse + verify fit in the hard limit
        self.restarts = 0
        self._ctx = mp.get_context("spawn")
        self._pool = None
        self._warmup = None
        self._start()

    def _start(self) -> None:
        self._pool = self._ctx.Pool(self.workers, initializer=_init_worker, initargs=(self.memory_mb,))
        self._warmup = [self._pool.apply_async(_warm) for _ in range(self.workers)]

    def _restart(self) -> None:
        self.restarts += 1
        self._pool.terminate()
        self._pool.join()
        self._start()

    def _wait_ready(self) -> None:
        for w in self._warmup or []:
            w.get(timeout=120)  # spawning and importing sympy; minutes only on a broken install
        self._warmup = None

    def verify(self, items: list[tuple[str, str]]) -> list[tuple[float, str]]:
        """[(pred, gold)] -> [(score, status)], status in ok | timeout | error."""
        if not items:
            return []
        self._wait_ready()
        results: list[tuple[float, str] | None] = [None] * len(items)
        pending = [self._pool.apply_async(self.target, (p, g, self.soft_timeout)) for p, g in items]
        deadline = time.monotonic() + self.timeout_s * (math.ceil(len(items) / self.workers) + 1)
        self._collect(pending, list(range(len(items))), results, deadline)
        left = [i for i, r in enumerate(results) if r is None]
        if left:
            self._restart()
            for s in range(0, len(left), self.workers):
                chunk = left[s : s + self.workers]
                self._wait_ready()
                asyncs = [self._pool.apply_async(self.target, (*items[i], self.soft_timeout)) for i in chunk]
                self._collect(asyncs, chunk, results, time.monotonic() + self.timeout_s + 1.0)
                if any(results[i] is None for i in chunk):
                    for i in chunk:
                        if results[i] is None:
                            results[i] = (0.0, "timeout")
                    self._restart()
            log.warning("scoring: %d of %d items hit the %.1fs limit", sum(r[1] == "timeout" for r in results), len(items), self.timeout_s)
        return results  # type: ignore[return-value]

    @staticmethod
    def _collect(asyncs, index: list[int], results: list, deadline: float) -> None:
        for i, a in zip(index, asyncs):
            try:
                results[i] = a.get(timeout=max(0.0, deadline - time.monotonic()))
            except mp.TimeoutError:
                continue
            except Exception:  # the worker raised while unpickling or returning
                results[i] = (0.0, "error")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
