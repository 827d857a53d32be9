"""Range checks of the learning rates, lengths and counts of the groups validated in
skyexp.config.checks (model, algo, temperature, rollout, reward, logger, trainer); the data-side
groups check
theirs in skyexp.config.data and .eval, the stage plan in .stages. Called from `validate`, so a
value no run can use fails before anything loads, naming its key, instead of as a torch error
after W&B has started and the model has been built."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# check(condition, key, message), from skyexp.config.checks
Check = Callable[[bool, str, str], None]


def _at_least(check: Check, group: str, obj: Any, minimum: int, *names: str, why: str = "") -> None:
    for name in names:
        check(getattr(obj, name) >= minimum, f"{group}.{name}", f"must be >= {minimum}{why}")


def validate_ranges(c: Any, check: Check) -> None:
    """Every learning rate, length and count outside skyexp.config.data/.eval/.stages (c:
    Config)."""
    m, a, r, w, lg, t = c.model, c.algo, c.rollout, c.reward, c.logger, c.trainer
    _at_least(
        check,
        "model",
        m,
        1,
        "hidden_size",
        "num_layers",
        "num_heads",
        "intermediate_size",
        "max_positions",
    )
    check(
        m.hidden_size % m.num_heads == 0,
        "model.num_heads",
        f"must divide model.hidden_size ({m.hidden_size})",
    )
    check(
        a.ratio_max > 1, "algo.ratio_max", "must be > 1 (it bounds the importance ratio from above)"
    )
    check(a.adv_eps > 0, "algo.adv_eps", "must be > 0")
    _at_least(check, "temperature", c.temperature, 0, "steps", why=" (0: the whole RL run)")
    _at_least(check, "rollout", r, 1, "max_batch")
    _at_least(check, "rollout", r, 0, "max_model_len", why=" (0: the model's own limit)")
    _at_least(check, "reward", w, 1, "max_answer_chars")
    _at_least(check, "reward", w, 0, "memory_mb", why=" (0: no cap)")
    _at_least(check, "logger", lg, 0, "samples_every", why=" (0: no sample tables)")
    _at_least(check, "logger", lg, 1, "samples_rows")
    _at_least(check, "logger", lg, 0, "line_every", why=" (0: no step lines)")
    _at_least(
        check,
        "logger",
        lg,
        -1,
        "line_every_sft",
        why=" (-1: about 20 lines per SFT stage; 0: none)",
    )
    _at_least(check, "trainer", t, 0, "threads", why=" (0: cores / local ranks)")
    _at_least(check, "trainer", t, 0, "warmup_steps")
    check(t.weight_decay >= 0, "trainer.weight_decay", "must be >= 0")
    check(t.grad_clip >= 0, "trainer.grad_clip", "must be >= 0 (0: no clipping)")
    check(all(0 <= b < 1 for b in t.betas), "trainer.betas", "AdamW's betas must be in [0, 1)")
