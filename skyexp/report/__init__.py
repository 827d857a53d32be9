"""A sweep's report in one command: `python -m skyexp.report <sweep dir>... [--wandb
entity/project]`.

From local run directories only (metrics.jsonl, summary.json, .hydra/config.yaml,
wandb_run.json) it writes one self-contained HTML page (skyexp.report.html); with --wandb it
also saves the same panels as a W&B Report (skyexp.report.wandb_report) and prints its URL.
Runs are grouped by the config keys that differ between them (skyexp.report.runs), seeds averaged.
"""

from skyexp.report.runs import Run, differing_keys, group_runs, load_runs

__all__ = ["Run", "differing_keys", "group_runs", "load_runs"]
