"""Exact token entropy and entropy controllers.

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


# Controllers: (coef, entropy, params) -> (next coef, coef in force this step).
# `entropy` is this step's mean token entropy of the sampling policy over the tokens that train,
# known before the update (the rollout carries it), so no controller lags a step behind.
# The coefficient is the controller's whole state (Counters.entropy_coef, saved with a checkpoint).
# A controller's keyword-only parameters are entropy.* config keys of the same name, bound at
# lookup (skyexp.config.names.bind). Token-level mechanisms (clip_cov, kl_cov,
# high_entropy_tokens) are `entropy.token_rule`s in skyexp.algos.token_rules; both compose.


def no_bonus(coef: float, entropy: float) -> tuple[float, float]:
    """Entropy is measured and logged; no bonus."""
    return coef, 0.0


def fixed_bonus(coef: float, entropy: float) -> tuple[float, float]:
    """Constant coefficient: loss -= coef * H."""
    return coef, coef


def adaptive_bonus(
    coef: float, entropy: float, *, target: float, delta: float, coef_min: float, coef_max: float
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


CONTROLLERS: dict[str, Callable[..., tuple[float, float]]] = {
    "none": no_bonus,
    "fixed": fixed_bonus,
    "adaptive": adaptive_bonus,
}
