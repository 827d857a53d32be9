"""`python -m skyexp.eval [overrides]`: evaluate one or more checkpoints on one or more benchmarks.

The config is conf/eval.yaml: the training groups (model, data, rollout, reward, eval, logger,
trainer, ...) plus `benchmarks` and `checkpoints`. Sampling goes through the training rollout
engine, scoring through the training reward (math-verify in the sandboxed pool), so a number
here means the same as the `val/...` numbers logged during training.

A list of benchmarks (`benchmarks=[aime24,math500]`) is expanded by composing the config once
per name with `eval=<name>` and the command line's other overrides, so `eval.n=64` applies to
each, and `eval.path=/data/${eval.name}.jsonl` (an interpolation) gives each its own file.
A Hydra multirun (`-m eval=aime24,amc23`) also works, as separate runs.

Outputs in the run directory: eval/<benchmark>.jsonl (per-problem records; eval/<checkpoint>/...
when comparing checkpoints), eval/summary.json, eval/passk.png, a console table, and the W&B
run (metrics, the pass@k curves as line plots, a table of samples).
"""

from __future__ import annotations

from skyexp.config import EvalRunConfig
from skyexp.evaluation.job import evaluate_all, prepare_benchmarks


def main() -> None:
    from skyexp.cli import hydra_command

    hydra_command(evaluate_all, config_name="eval", schema=EvalRunConfig, prog="skyexp.eval",
                  prepare=prepare_benchmarks)()


if __name__ == "__main__":
    main()
