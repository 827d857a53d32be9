"""Worker for tests/e2e/test_dist_update.py: run rl_update on this rank's share of a saved batch
with the
policy sharded by FSDP2, and write the gathered parameters (rank 0).

    torchrun --nproc_per_node=2 tests/dist_update_worker.py <model dir> <batch.pt> <out.pt>
"""

from __future__ import annotations

import sys

import torch
from conftest import loss_spec, update_settings

from skyexp import distributed
from skyexp.config import AlgoConfig, ModelConfig
from skyexp.model.loading import load_model
from skyexp.records import Rollout
from skyexp.rl.update import UpdateBatch, rl_update


def main(model_dir: str, batch_path: str, out_path: str) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    d = distributed.setup("cpu", 1)
    data = torch.load(batch_path)
    ro = Rollout(**data["rollout"])
    groups = ro.sequences.shape[0] // ro.n
    share = groups // d.world_size
    rows = torch.arange(d.rank * share * ro.n, (d.rank + 1) * share * ro.n)
    local = Rollout(
        sequences=ro.sequences[rows],
        attention_mask=ro.attention_mask[rows],
        response_mask=ro.response_mask[rows],
        logprobs=ro.logprobs[rows],
        truncated=ro.truncated[rows],
        prompt_len=ro.prompt_len,
        n=ro.n,
        temperature=ro.temperature,
        entropy=ro.entropy[rows],
    )
    out = {}
    for name, case in data["cases"].items():
        policy = load_model(case.get("model_dir", model_dir), ModelConfig())
        distributed.shard(policy, d)
        opt = torch.optim.SGD(policy.parameters(), lr=1.0)
        ref = data["ref"][rows] if case.get("kl_coef") else None
        algo = AlgoConfig(**case["algo"])
        batch = UpdateBatch(local, data["adv"][rows], data["weights"][rows], ref_logprobs=ref,
                            max_response_len=case.get("max_len") or 0)
        settings = update_settings(
            case["micro_batch_size"],
            0.0,
            algo,
            d.world_size,
            d.device,
            share_prompts=case.get("share", False),
            logprob_chunk=case.get("chunk", 1024),
            max_tokens=case.get("max_tokens", 0),
            padding_free=case.get("padding_free", False),
        )
        stats = rl_update(
            policy,
            opt,
            batch,
            loss_spec(algo, case.get("coef", 0.0), case.get("kl_coef", 0.0)),
            settings,
        )
        state = get_model_state_dict(
            policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        out[name] = {
            "params": state,
            "pg_loss": stats.pg_loss,
            "entropy": stats.entropy,
            "kl_ref": stats.kl_ref,
        }
    if d.is_main:
        torch.save(out, out_path)
    distributed.barrier()
    distributed.teardown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
