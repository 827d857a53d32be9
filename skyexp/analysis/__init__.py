"""Analysis of finished runs, read-only over their directories (or the W&B API).

- load.py     runs -> pandas DataFrames (metrics, evals, summaries, sample tables); the notebooks
              import `skyexp.analysis` and use these names from it
- findings/   the findings study: seed aggregation, the entropy-law fit, verdicts, the report
              (`python -m skyexp.findings <sweep dirs...>`, or `python -m skyexp.analysis.findings`)
"""

from skyexp.analysis.load import (
    RL_STEP,
    RunData,
    eval_frame,
    find_runs,
    latest_sweep,
    load_run,
    load_runs,
    load_table,
    load_wandb_api,
    rl_frame,
    summary_frame,
)

__all__ = ["RL_STEP", "RunData", "eval_frame", "find_runs", "latest_sweep", "load_run", "load_runs",
           "load_table", "load_wandb_api", "rl_frame", "summary_frame"]
