"""`python -m skyexp.filter [overrides]`: offline data filtering of the configured `data.*`.

1. Decontamination (filter.benchmarks non-empty): drop training problems that match an eval
   benchmark problem — normalised exact match, or n-gram containment >= filter.overlap
   (skyexp.data.decontam) — and report each drop with the benchmark problem it matched.
2. Difficulty (filter.n > 0): sample n responses per prompt with the current model through the
   RL rollout engine and reward (skyexp.offline.sampling), record each prompt's pass rate, and
   drop the prompts solved never (pass rate 0) or always (1), as DeepScaleR and Skywork-OR1 prepare
   their data (arXiv 2505.22312 §3). The kept rows carry `pass_rate`, `correct` and `n`, so a
   curriculum can select on them: data=jsonl data.path=<out> data.difficulty_key=pass_rate
   data.difficulty_range=[0.1,0.9].

Outputs (rank 0): <out> (the kept problems, loadable with data=jsonl), <out stem>.report.json
(counts, pass-rate histogram, every decontamination hit) and, with difficulty filtering,
<out stem>.samples.jsonl (every prompt's samples and scores, kept or not).

    python -m skyexp.filter data=deepscaler filter.n=16 filter.max_response_len=8192 \\
        model=r1_distill_qwen_1_5b rollout=vllm filter.out=/data/dsr_filtered.jsonl
    python -m skyexp.filter data=jsonl
data.path=../shared/data/train/deepscaler_aime_1983_2023.jsonl \\
        filter.n=0 filter.benchmarks=[../shared/data/eval/math500.jsonl]
"""

from __future__ import annotations

from skyexp.offline.filter import run_filter


def main() -> None:
    from skyexp.cli import hydra_command

    hydra_command(run_filter)()


if __name__ == "__main__":
    main()
