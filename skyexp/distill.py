"""`python -m skyexp.distill [overrides]`: rejection-sampled SFT data from the current model.

Sky-T1-7B step 2 (novasky-ai.github.io/posts/sky-t1-7b): sample k responses per prompt of
`data.*` from a checkpoint (model.path=..., or the cached SFT result of this config), keep those
the reward (math-verify on the last \\boxed{}) judges correct — at most distill.keep distinct ones
per prompt — and write them as an SFT set in conversation format, which an SFT stage trains on
with the response-only loss:

    python -m skyexp.distill model.path=/ckpt/step1 data=eurus_numina distill.k=8
distill.out=/data/step2.jsonl
    python -m skyexp sft.source=jsonl sft.path=/data/step2.jsonl sft.format=conversation
sft.messages_key=messages ...

Each row: id, problem, answer, messages ([system], user, assistant: the response, starting with
data.response_prefix when the template has one, since that is where the sampled text began),
extracted (the verified answer), pass_rate (correct out of k, for the record). A response that
hit the length cap is never kept: its \\boxed{} may come from an unfinished text.
"""

from __future__ import annotations

from skyexp.offline.distill import run_distill


def main() -> None:
    from skyexp.cli import hydra_command

    hydra_command(run_distill)()


if __name__ == "__main__":
    main()
