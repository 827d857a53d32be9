"""`python -m skyexp.score IN.jsonl --out OUT.jsonl`: re-score generations made anywhere.

Each input row holds the model's `completion` and the gold `answer`; each output row is the
input row plus `score` (1.0 when the completion's last \\boxed{} is math-verify-equivalent to
the answer, else 0.0), `extracted` (that boxed answer, or null) and `status`: `correct`, `wrong`,
`no_answer` (no boxed answer), `timeout` or `error` (math-verify failed on it). This is the
training reward path exactly (skyexp.rewards.MathVerifyReward: extraction here, math-verify in a
spawned pool with per-item timeouts and a memory cap), so it is also the reward's public contract.

Bad input follows the data loader's rule (skyexp.offline.scoring): lines that are not JSON
objects are skipped, named with their line numbers and counted, and the run stops (exit 2) only
past --max-bad-fraction of them. Rows without a usable gold answer (`no_gold`) or without a
string completion (`no_completion`) are named, get score null and are left out of the accuracy.
"""

from __future__ import annotations

import sys

from skyexp.offline.score import main

if __name__ == "__main__":
    sys.exit(main())
