"""Rollouts with a plain Hugging Face model and a lean sampling loop (any device).

The engine keeps its own unsharded copy of the policy for generation: sampling token by token
through FSDP would all-gather every layer at every token. `sync_weights` refreshes the copy one
parameter at a time after each optimizer step (the same contract a vLLM engine has).

The loop calls the model one token at a time with a KV cache instead of `generate()`: log-probs
and entropies of the sampled tokens under softmax(logits / T) are computed on the way, and it
stops as soon as every row has emitted EOS. Each prompt runs once; its KV cache is copied to its
n samples. Finished rows are dropped from the batch and the KV cache as they accumulate, so short
answers do not pay for the longest one. Qwen2 / Llama / Mistral models decode through
skyexp.rollout.lean.LeanSteps (same numbers, less overhead per token); others, or `lean=False`,
through the model's own forward.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from skyexp.records import Rollout
from skyexp.rollout.lean import LeanSteps, ModelSteps, fuse_weights, lean_supported

COMPACT_AT = 0.75  # shrink the batch once a quarter of its rows have finished


class HFEngine:
    def __init__(
        self,
        model: torch.nn.Module,
        eos_id: int,
        pad_id: int,
        seed: int = 0,
        max_batch: int = 256,
        device: torch.device | str = "cpu",
        lean: bool = True,
    ):
        self.model = model.eval()
        self.model.config.use_cache = True
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.eos_id, self.pad_id, self.max_batch = eos_id, pad_id, max_batch
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.fused = fuse_weights(self.model) if lean and lean_supported(self.model) else None

    def sync_weights(self, policy: torch.nn.Module) -> None:
        from skyexp.distributed import full_parameters

        self.load_weights(full_parameters(policy))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy (name, full tensor) pairs into the engine's model, one at a time as they come."""
        mine = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, full in weights:
                mine[name].copy_(full.to(mine[name].dtype))

    def generate(self, prompt_ids: list[list[int]], n: int, max_tokens: int, temperature: float,
                 top_p: float = 1.0) -> Rollout:
        if not prompt_ids:
            raise ValueError("generate: no prompts")
        plen = max(len(r) for r in prompt_ids)
        # prompts per chunk: each prompt's group stays in one chunk
        per_chunk = max(1, self.max_batch // n)
        parts = [
            self._sample(prompt_ids[s : s + per_chunk], n, plen, max_tokens, temperature, top_p)
            for s in range(0, len(prompt_ids), per_chunk)
        ]
        width = max(p[0].shape[1] for p in parts)  # P + longest response
        def cat(i: int, w: int, fill: float) -> torch.Tensor:
            return torch.cat([_pad_right(p[i], w, fill) for p in parts])
        return Rollout(
            sequences=cat(0, width, self.pad_id),
            attention_mask=cat(1, width, 0),
            response_mask=cat(2, width - plen, 0),
            logprobs=cat(3, width - plen, 0),
            truncated=torch.cat([p[4] for p in parts]),
            prompt_len=plen,
            n=n,
            temperature=temperature,
            entropy=cat(5, width - plen, 0),
        )

    def _left_padded(
        self, prompts: list[list[int]], plen: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts left-padded to plen [P, plen] and their attention mask."""
        dev = self.device
        ids = torch.full((len(prompts), plen), self.pad_id, dtype=torch.long, device=dev)
        for i, r in enumerate(prompts):
            ids[i, plen - len(r) :] = torch.tensor(r, dtype=torch.long)
        lengths = torch.tensor([len(r) for r in prompts], device=dev)
        return ids, (torch.arange(plen, device=dev) >= plen - lengths[:, None]).long()

    @torch.inference_mode()
    def _sample(
        self,
        prompts: list[list[int]],
        n: int,
        plen: int,
        max_tokens: int,
        temperature: float,
        top_p: float,
    ):
        dev, num = self.device, len(prompts) * n
        ids, prompt_attn = self._left_padded(prompts, plen)
        seq = torch.full((num, plen + max_tokens), self.pad_id, dtype=torch.long, device=dev)
        attn = torch.zeros_like(seq)
        seq[:, :plen], attn[:, :plen] = (
            ids.repeat_interleave(n, 0),
            prompt_attn.repeat_interleave(n, 0),
        )
        logprobs = torch.zeros(num, max_tokens, dtype=torch.float32, device=dev)
        entropy = torch.zeros(num, max_tokens, dtype=torch.float32, device=dev)
        done = torch.zeros(num, dtype=torch.bool, device=dev)
        steps = (
            LeanSteps(self.model, self.fused, plen + max_tokens)
            if self.fused is not None
            else ModelSteps(self.model)
        )
        logits = steps.start(ids, prompt_attn, n)  # [num, V]
        live = None  # rows still in the KV cache (None: all of them)
        steps_taken = 0
        for t in range(max_tokens):
            tok, lp, ent = sample_token(logits, temperature, top_p, self.generator)
            rows = slice(None) if live is None else live
            alive = ~done[rows]
            tok = torch.where(alive, tok, self.pad_id)
            seq[rows, plen + t] = tok
            attn[rows, plen + t] = alive.long()  # also the response mask
            logprobs[rows, t] = torch.where(alive, lp, 0.0)
            entropy[rows, t] = torch.where(alive, ent, 0.0)
            still = alive & (tok != self.eos_id)  # rows outside `live` finished earlier
            done[rows] = ~still
            left = int(still.sum())  # the one host sync per token
            steps_taken = t + 1
            if left == 0 or t + 1 == max_tokens:
                break
            if left <= COMPACT_AT * still.numel():
                # drop finished rows from the cache: later tokens cost only what is still running
                keep = still.nonzero().squeeze(1)
                steps.select(keep)
                live = keep if live is None else live[keep]
                tok = tok[keep]
            logits = steps.step(tok)
        s = steps_taken
        # the rollout lives on the CPU whatever the engine's device, as vLLM's does: the step's
        # weights and advantages are CPU tensors and the update moves each micro-batch to the device
        out = (
            seq[:, : plen + s],
            attn[:, : plen + s],
            attn[:, plen : plen + s].float(),
            logprobs[:, :s],
            ~done,
            entropy[:, :s],
        )
        return tuple(x.to("cpu", copy=True) for x in out)


def sample_token(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator
):
    """logits [N, V] -> (token [N], log-prob [N], entropy [N]) under the full softmax(logits / T).

    Temperature 0 is greedy (log-prob and entropy under T = 1). top_p < 1 samples from the
    smallest set of tokens whose probability reaches top_p (nucleus), but the log-prob and entropy
    returned are of the untruncated distribution, the one the policy loss uses.
    """
    z = logits.float()
    logp = torch.log_softmax(z / (temperature or 1.0), -1)
    probs = logp.exp()
    entropy = -(probs * logp).sum(-1)
    if temperature == 0:
        tok = z.argmax(-1)
    else:
        if top_p < 1.0:
            sorted_p, idx = probs.sort(-1, descending=True)
            keep = (sorted_p.cumsum(-1) - sorted_p) < top_p  # always keeps the top token
            probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p * keep)
        tok = draw(probs, generator)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1), entropy


def draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row of probs [N, V] (rows need not sum to 1), by inverse CDF: the first index
    whose cumulative mass exceeds u * total, u ~ U[0, 1). The distribution of
    torch.multinomial(probs, 1), from one uniform per row instead of one exponential per
    vocabulary entry (on CPU the exponentials cost more than a tiny model's forward step). The
    cumulative sum is in float64 so that the tail of a large vocabulary keeps its mass. Zero-mass
    tokens are never drawn. Draws differ from torch.multinomial's for the same seed."""
    cdf = probs.double().cumsum(-1)
    u = (
        torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=torch.float64)
        * cdf[:, -1:]
    )
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def _pad_right(x: torch.Tensor, width: int, value: float) -> torch.Tensor:
    if x.shape[1] == width:
        return x
    pad = torch.full((x.shape[0], width - x.shape[1]), value, dtype=x.dtype, device=x.device)
    return torch.cat([x, pad], dim=1)
