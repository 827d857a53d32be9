"""Schemas of the algorithm side: `algo.*` (advantage, policy loss, clip, off-policy correction,
pass@k, resets) and `entropy.*` (bonus, controllers, token rules, shaped advantages); the checks
that span them are in skyexp/config/checks.py."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AlgoConfig:
    name: str = "rloo"  # the preset (conf/algo/<name>.yaml); a label
    advantage: str = "rloo"  # advantage estimator, a key of skyexp.algos.advantages.ADVANTAGES
    n: int = 8  # samples per prompt
    batch_size: int = 16  # prompts per RL step (global, over all ranks)
    clip_low: float = 0.2
    clip_high: float = 0.2
    clip_c: float = 0.0  # dual-clip bound (> 1 enables it); 0 disables
    # entropy.token_rule=kl_cov only: clamp of the ratio in its unclipped surrogate to [1/ratio_max,
    # ratio_max]. PPO, GSPO and CISPO do not take it (their exp guard is a fixed log-ratio cap of
    # 20).
    ratio_max: float = 10.0
    loss_agg: str = "token-mean"  # a key of skyexp.algos.losses.AGGREGATIONS
    norm_by_std: bool = True  # grpo: divide by the group std (False gives Dr.GRPO)
    adv_eps: float = 1e-6
    # KL to a frozen reference (the policy RL starts from), loaded only when kl_coef > 0.
    kl_coef: float = 0.0
    kl_estimator: str = "k3"  # k1 | k2 | k3 (skyexp.algos.kl)
    # loss: + kl_coef * KL in the loss (GRPO) | reward: r -= kl_coef * sum_t KL_t (RLOO), or
    # -kl_coef * KL_t on
    # each token for reinforce_pp (its token-level form, skyexp.algos.advantages.TOKEN_RETURNS)
    kl_mode: str = "loss"
    # Group filter (skyexp.algos.filters): none | zero_variance | mixed_accuracy | accuracy_band
    filter_groups: str = "none"
    filter_low: float = 0.2  # accuracy_band: keep groups with filter_low <= accuracy <= filter_high
    filter_high: float = 0.8
    # DAPO dynamic sampling: generate more prompt batches until batch_size groups pass the filter.
    dynamic_sampling: bool = False
    max_gen_batches: int = 10  # give up after this many generation batches (train on what passed)
    gen_batch_size: int = 0  # prompts per generation batch; 0: the step's prompt batch
    mask_truncated: bool = False  # DAPO overlong filtering: truncated responses get no loss
    ppo_epochs: int = 1
    mini_batches: int = 1
    # Old-policy log-probs for the importance ratio: the engine's sampling log-probs (exact with the
    # hf engine), or recomputed by the trainer once before the first optimizer step (as verl does;
    # use with engines whose numerics differ, e.g. vLLM in bf16). auto: recompute unless the sampler
    # is the trainer's own model (rollout=hf); GSPO's presets use it (old_logprobs_recomputed).
    old_logprobs: str = "rollout"  # rollout | recompute | auto
    # Truncated importance sampling for the sampler/trainer mismatch (skyexp.algos.rollout_is): each
    # token's loss weighted by min(pi_trainer_old / pi_sampler, rollout_is_cap). none | token |
    # sequence
    rollout_is: str = "none"
    rollout_is_cap: float = 2.0
    # Off-policy correction (skyexp.algos.off_policy): auto (algo.old_logprobs and algo.rollout_is
    # decide, as before) | behaviour (ratio against the sampler's log-probs, no weight) | tis
    # (against the recomputed pi_prox, algo.rollout_is's truncated weights) | decoupled (AReaL's
    # decoupled PPO, arXiv 2505.24298: against pi_prox, each token's loss weighted by
    # pi_prox / pi_sampler, tokens whose weight exceeds off_policy_cap dropped)
    off_policy: str = "auto"
    off_policy_cap: float = 5.0
    # The policy loss (skyexp.algos.seq_losses): ppo (PPO's clipped surrogate, or what
    # entropy.token_rule puts in its place) | gspo | gspo_token (GSPO, arXiv 2507.18071: one
    # importance ratio per sequence, the geometric mean of its tokens') | cispo (CISPO, arXiv
    # 2506.13585: the clipped ratio as a detached weight, every token keeps its gradient) | ce_gppo
    # (CE-GPPO, arXiv 2509.20712: PPO whose clipped tokens keep a gradient scaled by ce_beta1 /
    # ce_beta2) | simko (SimKO, arXiv 2510.14807: top-K boost on correct answers, top-1 penalty on
    # wrong ones, at high-entropy tokens). All use clip_low / clip_high as their clip range
    # (GSPO's presets: 3e-4 / 4e-4).
    policy_loss: str = "ppo"
    # ce_gppo: scales of the A < 0 tokens below 1 - clip_low (exploitation) and of the A > 0
    # tokens above 1 + clip_high (exploration); 0.5 / 1 are the authors' 1.5B launch script's
    # (their 7B: 0.75 / 1), read from their code, not the paper's text
    ce_beta1: float = 0.5
    ce_beta2: float = 1.0
    # simko (arXiv 2510.14807, skyexp.algos.simko): on correct answers a share simko_alpha of the
    # gradient at high-entropy tokens (above the simko_tau quantile of the row's entropies) goes
    # to the simko_k most likely tokens; on wrong ones the top-1 there gets simko_lambda x A.
    # Values of the authors' code and scripts (CLR-Lab/SimKO), not read in the paper's text.
    simko_k: int = 3
    simko_alpha: float = 0.01
    simko_lambda: float = 1.1
    simko_tau: float = 0.8
    # Pass@k training (advantage passk_chen | pkpo | passk_best, skyexp.algos.passk): the k of the
    # pass@k objective each group is trained for (1 <= passk_k <= n; passk_best is pass@n).
    passk_k: int = 1
    # ProRL (arXiv 2505.24864): with a KL term on, every ref_reset_every RL steps the reference
    # becomes the current policy (0: never), and with ref_reset_optimizer AdamW's moments restart.
    ref_reset_every: int = 0
    ref_reset_optimizer: bool = True


@dataclass
class EntropyConfig:
    name: str = "none"  # the preset (conf/entropy/<name>.yaml); a label
    # Two composable mechanisms; each registered function takes the keys below it needs by name.
    # the bonus coefficient: none | fixed | adaptive | aer (skyexp.algos.entropy)
    controller: str = "none"
    # none | clip_cov | kl_cov | high_entropy_tokens (skyexp.algos.token_rules)
    token_rule: str = "none"
    coef: float = 0.0  # initial / fixed coefficient
    target: float = 0.2  # adaptive: target token entropy
    delta: float = 1e-4  # adaptive: step of the coefficient
    coef_min: float = 0.0
    coef_max: float = 5e-3
    # aer (arXiv 2510.10959; adaptive's keys coef, delta, coef_min, coef_max too): the target is
    # aer_rho x the first RL step's entropy, and the bonus acts on the prompts whose group
    # accuracy this step is <= aer_tau (hard ones)
    aer_rho: float = 0.8
    aer_tau: float = 0.5
    clip_cov_ratio: float = 2e-4  # clip_cov: share of tokens whose gradient is cut
    cov_low: float = 1.0  # clip_cov: covariance band the cut tokens are drawn from
    cov_high: float = 5.0
    # kl_cov: share of tokens (largest covariance) that get the KL penalty
    kl_cov_ratio: float = 2e-3
    kl_cov_coef: float = 1.0  # kl_cov: penalty weight beta
    # high_entropy_tokens: share of highest-entropy tokens that get a gradient
    top_ratio: float = 0.2
    # Entropy-shaped advantages (Cheng et al., arXiv 2506.14758), composable with any controller,
    # token rule and estimator: A'_t = A + min(adv_alpha * H_t, |A| / adv_kappa), H_t the sampler's
    # token entropy (detached). adv_alpha = 0: off. We read alpha 0.4, kappa 2 in the paper (not
    # re-checked).
    adv_alpha: float = 0.0
    adv_kappa: float = 2.0
