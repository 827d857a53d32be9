"""`python -m skyexp.score IN.jsonl --out OUT.jsonl`: re-score generations made anywhere.

Each input row holds the model's `completion` and the gold `answer`; each output row is the
input row plus `score` (1.0 when the completion's last \\boxed{} is math-verify-equivalent to
the answer, else 0.0) and `status` (`ok`, `timeout` or `error`). This is the training reward
path exactly (skyexp.rewards.MathVerifyReward: extraction here, math-verify in a spawned pool
with per-item timeouts and a memory cap), so it is also the reward's public contract.

A row without a string completion or a usable answer scores 0.0 with status `error`; a line that
is not JSON stops the run (exit 2) naming the line, since the file itself is then broken.
"""

from __future__ import annotations

import sys

from skyexp.offline.score import main

if __name__ == "__main__":
    sys.exit(main())
