"""Exact token entropy and entropy controllers (fixed, adaptive, AER).

Entropy is of the sampling distribution softmax(logits / T) over the full vocabulary:
H = logsumexp(z) - sum_v softmax(z)_v z_v,  z = logits / T.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def token_entropy(
    logits: torch.Tensor, temperature: float = 1.0, chunk: int = 4096
) -> torch.Tensor:
    """logits [..., V] -> entropy [...] in nats, float32, computed `chunk` rows at a time so the
    float32 softmax stays bounded for a 150k vocabulary. Differentiable."""
    flat = logits.reshape(-1, logits.shape[-1])
    parts = []
    for s in range(0, flat.shape[0], chunk):
        z = flat[s : s + chunk].float() / temperature
        logp = torch.log_softmax(z, dim=-1)
        parts.append(-(logp.exp() * logp).sum(-1))
    out = torch.cat(parts) if parts else flat.new_zeros(0, dtype=torch.float32)
    return out.view(logits.shape[:-1])


# Controllers: (coef, entropy, anchor, params) -> (next coef, coef in force this step).
# `entropy` is this step's mean token entropy of the sampling policy over the tokens that train,
# known before the update (the rollout carries it), so no controller lags a step behind; `anchor`
# is the same measure at the run's first RL step (Counters.entropy_anchor), which only AER reads.
# The coefficient is the controller's whole state (Counters.entropy_coef, saved with a checkpoint).
# A controller's keyword-only parameters are entropy.* config keys of the same name, bound at
# lookup (skyexp.config.names.bind). Token-level mechanisms (clip_cov, kl_cov,
# high_entropy_tokens) are `entropy.token_rule`s in skyexp.algos.token_rules; both compose.


def no_bonus(coef: float, entropy: float, anchor: float = 0.0) -> tuple[float, float]:
    """Entropy is measured and logged; no bonus."""
    return coef, 0.0


def fixed_bonus(coef: float, entropy: float, anchor: float = 0.0) -> tuple[float, float]:
    """Constant coefficient: loss -= coef * H."""
    return coef, coef


def adaptive_bonus(
    coef: float,
    entropy: float,
    anchor: float = 0.0,
    *,
    target: float,
    delta: float,
    coef_min: float,
    coef_max: float,
) -> tuple[float, float]:
    """Skywork-OR1 adaptive entropy control (arXiv 2505.22312, sec. 3.2; their release's
    EntController).

    alpha_k = c_k * 1[H_k < target]  (the bonus in force at step k: loss -= alpha_k * H)
    c_{k+1} = clip(c_k + delta * sign(target - H_k), c_min, c_max),  c_0 = entropy.coef (0).
    Release defaults: target 0.2, delta 1e-4, c_min 0, c_max 5e-3. H_k is the current policy's
    entropy on this step's training tokens, measured before the update (the rollout's entropies);
    their release measures it during the update and so applies it one step late. At H_k == target
    the coefficient decreases and no bonus applies, as in the release.
    """
    below = entropy < target
    in_force = coef if below else 0.0
    step = delta if below else -delta
    return min(max(coef + step, coef_min), coef_max), in_force


def aer_bonus(
    coef: float,
    entropy: float,
    anchor: float,
    *,
    aer_rho: float,
    delta: float,
    coef_min: float,
    coef_max: float,
) -> tuple[float, float]:
    """AER's global coefficient (Zhang et al., "Rediscovering Entropy Regularization: Adaptive
    Coefficient Unlocks Its Potential for LLM Reinforcement Learning", arXiv 2510.10959): the
    initial-anchored target and the dynamic global adjustment; the third component, per-prompt
    allocation by difficulty, is aer_hard_prompts below (the bonus acts on hard prompts only).

        H* = aer_rho * H_0                              (H_0: `anchor`, the first RL step's H)
        alpha_k in force;  alpha_{k+1} = clip(alpha_k + delta * sign(H* - H_k), c_min, c_max)
        loss -= alpha_k * agg(w_i * H)                  (w_i: aer_hard_prompts, 1 or 0 per row)

    The coefficient rises while entropy is below the target and falls (to c_min) while it is
    above, so entropy is held in a band below its starting level, the paper's stated aim ("the
    policy entropy maintained within a moderate range below its initial level"). The paper's
    method section could not be read from here (only its abstract and third-party summaries):
    the three components are the abstract's; their formulas above are this implementation's
    (the update is Skywork-OR1's sign step, entropy.controller=adaptive, with the target anchored
    at H_0 instead of fixed, and the bonus in force whatever the side of the target), and no
    value of the preset (conf/entropy/aer.yaml) is read from the paper. At H_k == H* the
    coefficient falls, as adaptive's. anchor <= 0 (not measured yet) counts as H_k."""
    target = aer_rho * (anchor if anchor > 0 else entropy)
    step = delta if entropy < target else -delta
    return min(max(coef + step, coef_min), coef_max), coef


def aer_hard_prompts(correct: torch.Tensor, *, aer_tau: float) -> torch.Tensor:
    """AER's difficulty-aware allocation (arXiv 2510.10959; the form is this implementation's,
    see aer_bonus): w_g = 1 for a prompt whose group accuracy this step, mean_j correct[g, j], is
    at most aer_tau (hard: it gets the entropy bonus), else 0 (easy: none). correct [G, n] 1/0 ->
    row weights [G*n] (float32), each group's weight on its n rows."""
    hard = correct.float().mean(-1) <= aer_tau
    return hard.float().repeat_interleave(correct.shape[-1])


CONTROLLERS: dict[str, Callable[..., tuple[float, float]]] = {
    "none": no_bonus,
    "fixed": fixed_bonus,
    "adaptive": adaptive_bonus,
    "aer": aer_bonus,
}

# Per-prompt weights of the entropy bonus, by controller: (correct [G, n], params) -> [G*n].
# A controller not listed here weighs every row 1.
PROMPT_WEIGHTS: dict[str, Callable[..., torch.Tensor]] = {"aer": aer_hard_prompts}
