"""The algorithm bound once: `build_algorithm(cfg)` looks up every registered piece the config
names (skyexp.algos) and binds its config values by keyword, into one frozen `Algorithm`.

validate() builds it, so an unknown name or a parameter no config key provides fails naming its
key before anything loads; setup keeps the record and every RL step calls its pieces. Nothing
after this module reads an algorithm's name: the registries' values decide.

Registry convention: a registered function takes its config values as keyword-only parameters
without defaults, named as the config keys are (`target` for entropy.target); `bind` gives them
from the config. Keyword-only parameters with defaults are run-time arguments (a random
generator) and stay free. One signature per kind (the comments on each registry say which).

This module imports torch (through skyexp.algos); skyexp.config imports it only inside
validate(), so the schemas stay importable without torch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from skyexp.algos.advantages import ADVANTAGES, TOKEN_RETURNS, Estimator
from skyexp.algos.entropy import CONTROLLERS, PROMPT_WEIGHTS
from skyexp.algos.filters import FILTERS
from skyexp.algos.kl import KL_ESTIMATORS
from skyexp.algos.losses import AGGREGATIONS
from skyexp.algos.off_policy import OFF_POLICY, OffPolicyEntry
from skyexp.algos.rollout_is import ROLLOUT_IS, is_weight_sums
from skyexp.algos.seq_losses import POLICY_LOSSES, PolicyLossEntry
from skyexp.algos.shaping import entropy_shaped
from skyexp.algos.token_rules import TOKEN_RULES
from skyexp.config.names import bind
from skyexp.config.schema import Config, ConfigError, old_logprobs_recomputed

Tensor = torch.Tensor
# (logp, old_logp, adv, selected, mask, extras) -> (per-token loss [N, T], per-token stats);
# extras: the keywords of a loss that needs more than log-probs (SimKO's topk_logp, top1, entropy)
PolicyLoss = Callable[
    [Tensor, Tensor, Tensor, Tensor | None, Tensor, dict[str, Tensor] | None],
    tuple[Tensor, dict[str, Tensor]],
]
# (adv, old_logp, entropy, mask) -> bool [N, T]
Select = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
# (trainer's old log-probs, sampler's, mask) -> weights [N, R], or None: no weighting
Weights = Callable[[Tensor, Tensor, Tensor], Tensor | None]
# (weights, trainer's old log-probs, sampler's, trained mask) -> {metric: (sum, tokens)}
WeightSums = Callable[[Tensor, Tensor, Tensor, Tensor], dict[str, tuple[float, float]]]

# algo.kl_mode -> (the KL term is in the loss, the KL penalty is in the reward)
KL_MODES = {"loss": (True, False), "reward": (False, True)}
# algo.old_logprobs: the sampler's, the trainer's, or the trainer's unless the sampler is its own
# model (skyexp.config.schema.old_logprobs_recomputed decides)
OLD_LOGPROBS = ("rollout", "recompute", "auto")


@dataclass(frozen=True)
class Algorithm:
    """Every algorithmic piece of an RL step, looked up and bound once per run."""

    advantage: Callable[[Tensor], Tensor]  # group rewards [B, n] -> advantages [B, n]
    estimator: Estimator  # the registry entry (its constraints: min n, largest k)
    # with the KL penalty in the reward, the estimator's token-level returns
    # (rewards [B, n], token KL [B*n, R], mask, beta) -> [B*n, R]; None: sequence-level advantages
    token_returns: Callable[[Tensor, Tensor, Tensor, float], Tensor] | None
    group_filter: Callable[[Tensor, Tensor], Tensor]  # (rewards, correct) [G, n] -> keep [G]
    # (coef, entropy, anchor) -> (next coef, in force)
    controller: Callable[[float, float, float], tuple[float, float]]
    # the controller's per-prompt weights of the bonus, correct [G, n] -> [G*n]; None: all 1
    entropy_rows: Callable[[Tensor], Tensor] | None
    # the off-policy correction's weight on each token's policy loss (algo.off_policy, or
    # algo.rollout_is under auto / tis), and the sums of its metrics
    is_weights: Weights
    weight_sums: WeightSums
    off_policy: OffPolicyEntry  # algo.off_policy's registry entry (its constraints)
    kl: Callable[[Tensor, Tensor], Tensor]  # (logp, ref_logp) -> per-token KL [N, R]
    policy_loss: PolicyLoss
    loss_entry: PolicyLossEntry  # algo.policy_loss's registry entry (its constraints)
    select: Select | None  # the token rule's selection; None: no selection
    grads_zero_advantage: bool  # the rule's selected tokens get a gradient even where A = 0
    aggregate: Callable[..., Tensor]  # (per-token values, mask, Normalisers) -> scalar
    # (adv, entropy, mask) -> [N, R]; None: off
    shape: Callable[[Tensor, Tensor, Tensor], Tensor] | None
    kl_loss_coef: float  # weight of the KL-to-reference loss term (0: none)
    kl_reward_coef: float  # weight of the KL penalty on the reward (0: none)
    recompute_old: bool  # the trainer's own old log-probs, not the sampler's
    adv_eps: float  # the whitening epsilon of token-level advantages
    topk: int = 0  # top-K log-probs the policy loss needs at each token (SimKO's K; 0: none)


def _lookup(registry: dict[str, Any], value: str, key: str) -> Any:
    if value not in registry:
        raise ConfigError(
            f"config key '{key}': unknown value '{value}'; valid options: "
            f"{', '.join(sorted(registry))}"
        )
    return registry[value]


def _rule_loss(loss, logp, old_logp, adv, selected, mask, extras=None):
    """A token rule's loss is per token: it takes the selection, not the mask."""
    return loss(logp, old_logp, adv, selected)


def _masked_loss(loss, logp, old_logp, adv, selected, mask, extras=None):
    """A loss of skyexp.algos.seq_losses takes the mask (GSPO's ratio is a per-row mean), and the
    extras it declares (PolicyLossEntry.topk: SimKO's)."""
    return loss(logp, old_logp, adv, mask, **(extras or {}))


def _policy_loss(c: Config) -> tuple[PolicyLoss, Select | None, bool]:
    """algo.policy_loss, or the loss of entropy.token_rule where it has one, and the rule's
    selection, their entropy.* / algo.* parameters bound."""
    a, e = c.algo, c.entropy
    rule = _lookup(TOKEN_RULES, e.token_rule, "entropy.token_rule")
    sections, what = {"entropy": e, "algo": a}, f"entropy.token_rule '{e.token_rule}'"
    own = bind(_lookup(POLICY_LOSSES, a.policy_loss, "algo.policy_loss").fn, {"algo": a},
               f"algo.policy_loss '{a.policy_loss}'")
    loss = (functools.partial(_masked_loss, own) if rule.loss is None
            else functools.partial(_rule_loss, bind(rule.loss, sections, what)))
    select = bind(rule.select, sections, what) if rule.select is not None else None
    return loss, select, rule.grads_zero_advantage


def _correction(c: Config) -> tuple[Weights, WeightSums]:
    """algo.off_policy's weights and their metric sums, or algo.rollout_is's where the mode has
    none of its own (auto, behaviour, tis), their algo.* parameters bound."""
    a = c.algo
    entry: OffPolicyEntry = _lookup(OFF_POLICY, a.off_policy, "algo.off_policy")
    if entry.weights is not None:
        what = f"algo.off_policy '{a.off_policy}'"
        return bind(entry.weights, {"algo": a}, what), bind(entry.sums, {"algo": a}, what)
    what = f"algo.rollout_is '{a.rollout_is}'"
    weights = bind(_lookup(ROLLOUT_IS, a.rollout_is, "algo.rollout_is"), {"algo": a}, what)
    return weights, bind(is_weight_sums, {"algo": a}, what)


def check_labels(c: Config) -> None:
    """(validate) The preset labels (algo.name, entropy.name) do not contradict the keys they
    name."""
    a, e = c.algo, c.entropy
    if a.name in ADVANTAGES and a.name != a.advantage:
        raise ConfigError(
            f"config key 'algo.name': '{a.name}' names an advantage estimator but algo.advantage "
            "is "
            f"'{a.advantage}': pick the preset (algo={a.name}) or set algo.advantage={a.name}"
        )
    for key, value, registry in (("entropy.controller", e.controller, CONTROLLERS),
                                 ("entropy.token_rule", e.token_rule, TOKEN_RULES)):
        if e.name != "none" and e.name in registry and e.name != value:
            raise ConfigError(
                f"config key 'entropy.name': '{e.name}' names a {key.split('.')[1]} but {key} is "
                f"'{value}': pick the preset (entropy={e.name}) or set {key}={e.name}"
            )


def build_algorithm(c: Config) -> Algorithm:
    """The run's Algorithm from the config; ConfigError naming the key on an unknown name or a
    parameter no config key provides."""
    a, e = c.algo, c.entropy
    est: Estimator = _lookup(ADVANTAGES, a.advantage, "algo.advantage")
    in_loss, in_reward = _lookup(KL_MODES, a.kl_mode, "algo.kl_mode")
    _lookup(dict.fromkeys(OLD_LOGPROBS), a.old_logprobs, "algo.old_logprobs")
    loss, select, grads_zero_advantage = _policy_loss(c)
    is_weights, weight_sums = _correction(c)
    shape = (functools.partial(entropy_shaped, adv_alpha=e.adv_alpha, adv_kappa=e.adv_kappa)
             if e.adv_alpha > 0 else None)
    return Algorithm(
        advantage=bind(est.fn, {"algo": a}, f"algo.advantage '{a.advantage}'"),
        estimator=est,
        token_returns=TOKEN_RETURNS.get(a.advantage) if in_reward else None,
        group_filter=bind(_lookup(FILTERS, a.filter_groups, "algo.filter_groups"), {"algo": a},
                          f"algo.filter_groups '{a.filter_groups}'"),
        controller=bind(_lookup(CONTROLLERS, e.controller, "entropy.controller"), {"entropy": e},
                        f"entropy.controller '{e.controller}'"),
        entropy_rows=(bind(PROMPT_WEIGHTS[e.controller], {"entropy": e},
                           f"entropy.controller '{e.controller}'")
                      if e.controller in PROMPT_WEIGHTS else None),
        is_weights=is_weights,
        weight_sums=weight_sums,
        off_policy=OFF_POLICY[a.off_policy],
        kl=_lookup(KL_ESTIMATORS, a.kl_estimator, "algo.kl_estimator"),
        policy_loss=loss,
        loss_entry=POLICY_LOSSES[a.policy_loss],
        select=select,
        grads_zero_advantage=grads_zero_advantage,
        aggregate=_lookup(AGGREGATIONS, a.loss_agg, "algo.loss_agg"),
        shape=shape,
        kl_loss_coef=a.kl_coef if in_loss else 0.0,
        kl_reward_coef=a.kl_coef if in_reward else 0.0,
        recompute_old=old_logprobs_recomputed(c),
        adv_eps=a.adv_eps,
        topk=a.simko_k if POLICY_LOSSES[a.policy_loss].topk else 0,
    )
