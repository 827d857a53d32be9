"""The debug overlay (lightning-hydra-template's `debug` idea): `+debug=tiny` turns any recipe
into its tiny twin on CPU. conf/debug/tiny.yaml swaps the groups that only make sense at scale
(model, data, SFT, eval, rollout engine, device) for the tiny ones; `shrink` then scales what
the recipe sets by number — stage steps and length caps, samples and prompts per step, the
entropy target (scaled to the tiny model's measured starting entropy) — keeping
its structure (the algorithm, entropy mechanism, filters, temperature and the number of stages).

    python -m skyexp +experiment=skywork_or1_7b +debug=tiny
"""

from __future__ import annotations

from dataclasses import replace

from skyexp.config.schema import Config, StageConfig


def shrink(c: Config) -> Config:
    """c with its numbers within c.debug's limits (c itself when the overlay is off)."""
    g = c.debug
    if not g.enabled:
        return c
    stages = c.context.stages
    total = sum(s.steps for s in stages)
    first, last = stages[0].max_response_len, stages[-1].max_response_len
    scale = min(1.0, g.max_rl_steps / max(total, 1))

    def small(s: StageConfig) -> StageConfig:
        # the caps map linearly onto [min_response_len, max_response_len], first stage to last
        share = (s.max_response_len - first) / (last - first) if last > first else 1.0
        cap = min(
            s.max_response_len,
            round(g.min_response_len + (g.max_response_len - g.min_response_len) * share),
        )
        return replace(
            s,
            steps=max(1, round(s.steps * scale)),
            max_response_len=cap,
            n=min(s.n, g.max_n) if s.n is not None else None,
            batch_size=_batch(s.batch_size, g.max_batch_size, c.algo.mini_batches)
            if s.batch_size
            else None,
        )

    algo = replace(
        c.algo,
        n=min(c.algo.n, g.max_n),
        batch_size=_batch(c.algo.batch_size, g.max_batch_size, c.algo.mini_batches),
        gen_batch_size=_batch(c.algo.gen_batch_size, g.max_batch_size, 1)
        if c.algo.gen_batch_size
        else 0,
    )
    context = replace(c.context, stages=[small(s) for s in stages])
    evaluation = replace(c.eval, max_response_len=min(c.eval.max_response_len, g.max_response_len))
    logger = replace(
        c.logger, tags=[*c.logger.tags, "tiny"] if "tiny" not in c.logger.tags else c.logger.tags
    )
    entropy = c.entropy
    if g.entropy_start > 0:
        entropy = replace(c.entropy, target=round(g.entropy_target_ratio * g.entropy_start, 4))
    return replace(c, algo=algo, context=context, eval=evaluation, logger=logger, entropy=entropy)


def _batch(value: int, cap: int, multiple: int) -> int:
    """min(value, cap), rounded down to a multiple of `multiple` (mini-batches divide the batch)."""
    small = min(value, cap)
    return max(multiple, small - small % multiple)
