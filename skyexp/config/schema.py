"""Typed configuration: one dataclass schema per Hydra config group (checks: skyexp.config.checks).

YAML files under conf/ only set values. At entry the composed config is merged onto
`OmegaConf.structured(Config)`, so a misspelt key or a wrong type fails before any model loads,
with the full key named (`trainer.lr`). `validate()` holds every check that spans fields.
Keys are at most two levels deep (`algo.clip_high`), except list entries of `context.stages`.
The data-side schemas and their checks are in skyexp/config/data.py, the eval schema and its
checks in skyexp/config/eval.py; `validate()` runs them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from skyexp.config.data import (
    DataConfig,
    DistillConfig,
    FilterConfig,
    SFTConfig,
)
from skyexp.config.eval import EvalConfig


class ConfigError(ValueError):
    """A config value is missing, mistyped or inconsistent; the message names the key."""


@dataclass
class ModelConfig:
    name: str = "tiny"
    # Hub id or local directory. Empty: build the tiny offline model from the fields below.
    path: str = ""
    revision: str = "main"
    dtype: str = "float32"  # float32 | bfloat16 | float16 (bfloat16 on GPUs; fp32 on CPUs)
    chat_template: bool = False  # wrap prompts with the tokenizer's chat template
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"
    # Tiny-model architecture (used only when path is empty).
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_positions: int = 512


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


@dataclass
class TemperatureConfig:
    # Rollout temperature (the loss uses the rollout's): constant, or a schedule over RL steps
    # (skyexp.config.stages.TEMPERATURE_SCHEDULES). A stage's own temperature wins over both.
    name: str = "t1_0"
    value: float = 1.0  # constant | the start of a schedule
    schedule: str = "constant"  # constant | linear | step
    end: float = 1.0  # linear: the temperature at step `steps`
    steps: int = 0  # linear: steps from value to end (0: the whole RL run)
    # step: RL steps where the temperature changes
    milestones: list[int] = field(default_factory=list)
    # step: the temperature from each milestone on
    values: list[float] = field(default_factory=list)


@dataclass
class StageConfig:
    steps: int = 100
    max_response_len: int = 64
    # Per-stage overrides; unset (None) inherits from algo / temperature / context.
    batch_size: int | None = None
    n: int | None = None
    temperature: float | None = None
    truncated: str | None = None


@dataclass
class ContextConfig:
    name: str = "single"
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    # At each stage boundary, drop the prompts the policy solved in every sample it drew for
    # them during the previous stage (Skywork-OR1's online filtering, arXiv 2505.22312).
    drop_solved: bool = False
    reset_optimizer: bool = False  # at each stage boundary, start AdamW's moments afresh
    # truncated responses: keep | mask | soft_penalty (skyexp.config.stages)
    truncated: str = "keep"


@dataclass
class RolloutConfig:
    name: str = "hf"  # hf | vllm (optional extra; skyexp/rollout/vllm.py)
    top_p: float = 1.0
    max_batch: int = 256  # sequences sampled together (hf: per chunk; vllm: max_num_seqs)
    # vllm only. Tensor parallel: GPUs per engine, consecutive torchrun ranks share one engine.
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.5  # GPU share for vLLM weights + KV cache (the rest trains)
    kv_cache_gb: float = 0.0  # KV cache size; 0: from gpu_memory_utilization on GPUs, 1 GiB on CPUs
    max_model_len: int = 0  # longest prompt + response; 0: the model's own limit
    enforce_eager: bool = False  # skip torch.compile (faster start, slower decoding)
    sleep: bool = False  # GPUs: free vLLM's memory (weights, KV cache) during the update
    # hf: skyexp's decoding step for Qwen2/Llama/Mistral (same numbers, less overhead)
    lean: bool = True
    # Asynchronous RL (skyexp.rl.async_loop): step n trains the batch generated by the policy of
    # step max(n - staleness, first step of its stage). 0: the synchronous loop. With
    # trainer.rollout_ranks > 0 generation runs on other ranks, overlapped with the update; with 0
    # each rank generates its batches itself, k steps ahead (the same batches, no overlap).
    staleness: int = 0


@dataclass
class RewardConfig:
    # the preset (conf/reward/<name>.yaml); correctness is always math-verify
    name: str = "math_verify"
    workers: int = 1  # scoring processes per rank
    timeout_s: float = 5.0  # per answer; a hang beyond it scores 0 and is counted
    max_answer_chars: int = 1000  # longer extracted answers score 0 (counted as errors)
    memory_mb: int = 2048  # address-space cap per scoring process
    # Weighted terms (skyexp.rewards.terms): accuracy | format | overlong | cosine | random. A
    # preset's dict is
    # merged onto this one: set a weight to 0 to drop a term.
    terms: dict[str, float] = field(default_factory=lambda: {"accuracy": 1.0})
    correct: float = 1.0  # accuracy term for a correct answer
    wrong: float = 0.0  # ... and for a wrong one (DAPO: -1)
    # format term: ask for one <think>...</think> block before the boxed answer
    format_think: bool = True
    # overlong term: buffer before the cap, share of max_response_len (DAPO 0.2)
    overlong_buffer: float = 0.2
    overlong_penalty: float = 1.0  # overlong term: penalty at the cap
    # cosine term: (r_0, r_L) when correct
    cos_correct: list[float] = field(default_factory=lambda: [2.0, 1.0])
    cos_wrong: list[float] = field(default_factory=lambda: [-10.0, 0.0])  # ... when wrong
    cos_exceed: float = -10.0  # cosine term: a truncated response
    random_p: float = 0.5  # random term (the random-reward control): P(reward.correct) per sample


@dataclass
class LoggerConfig:
    name: str = "default"
    backends: list[str] = field(default_factory=lambda: ["wandb", "jsonl", "console"])
    mode: str = "offline"  # offline | online | disabled (WANDB_MODE in the environment wins)
    project: str = "skyexp"
    entity: str | None = None
    group: str | None = None  # sweeps set their name: their runs share one W&B group
    # None: the job's command-line overrides (e.g. `algo.n=4,entropy=adaptive`)
    run_name: str | None = None
    job_type: str = "train"
    tags: list[str] = field(default_factory=list)
    notes: str | None = None
    dir: str = ""  # where W&B writes its files; empty: the run directory
    # extra wandb.Settings fields (e.g. init_timeout)
    settings: dict[str, Any] = field(default_factory=dict)
    samples_every: int = 50  # a W&B table of sample completions every this many RL steps; 0: never
    samples_rows: int = 8  # rows per table
    progress: bool = True
    # no progress bar (not a terminal, or progress=false): a step line every N RL steps; 0: none
    line_every: int = 1
    # the same for the SFT stage: a line every N SFT steps (its first and last step too); -1: about
    # 20
    # lines per SFT stage (every sft.steps // 20); 0: none
    line_every_sft: int = -1


@dataclass
class TrainerConfig:
    name: str = "fsdp"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch threads per rank; 0: cores / local ranks
    # Run-to-run identical results at a fixed config and world size (README, Reproducibility): one
    # thread per rank on CPU, deterministic torch kernels, cuBLAS/NCCL settings, vLLM batch
    # invariance
    deterministic: bool = False
    # CPU: freed memory stays in the process for the next step instead of going back to the kernel
    # and faulting in again (skyexp.distributed.keep_freed_memory); resident size stays at the peak
    keep_freed_memory: bool = True
    lr: float = 3e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    grad_clip: float = 1.0
    micro_batch_size: int = 64  # sequences per forward/backward in the update
    # Forward each prompt once for the samples of its group in a micro-batch (same gradient, the
    # prompt tokens' cost paid once per group instead of n times; skyexp.model.forward).
    share_prompts: bool = True
    # Token log-probs/entropies from the final hidden states, this many tokens' logits at a time,
    # recomputed in backward (skyexp.model.head): no [tokens x vocabulary] tensor is held for a
    # micro-batch. One chunk of a 152k vocabulary is chunk x 0.6 MB of float32 (x ~3 at the peak).
    # 0: the plain path (full logits of the micro-batch).
    logprob_chunk: int = 1024
    # > 0: micro-batches also hold at most this many prompt + response tokens (verl's
    # ppo_max_token_len_per_gpu): rows length-sorted and packed; one longer row trains alone. The
    # update is the same as with row-count micro-batches (global normalisers). 0: rows only.
    max_tokens_per_micro_batch: int = 0
    # Concatenate a micro-batch's rows into one sequence with no padding, rows told apart by
    # position ids (flash-attention varlen on GPU; a block-diagonal mask with sdpa/eager on CPU).
    # Needs logprob_chunk > 0; takes precedence over share_prompts.
    padding_free: bool = False
    # Ulysses sequence parallelism (skyexp.model.sequence_parallel): each padding-free row split
    # over sp_size ranks (world = data-parallel x sp_size); needs padding_free, heads and KV heads
    # divisible by it (or it by the KV heads). max_tokens_per_micro_batch stays per rank.
    sp_size: int = 1
    # FSDP2 CPU offload (skyexp.distributed.shard): none | optimizer (AdamW's moments on the CPU
    # between steps) | params (CPUOffloadPolicy: sharded parameters, gradients and the optimizer
    # step on the CPU). docs/long-context.md gives what each costs.
    offload: str = "none"
    # shard the policy with FSDP2 over the ranks (false: the plain model, one process only)
    fsdp: bool = True
    cache_dir: str = ""  # SFT results and built models; empty: $SKYEXP_CACHE or ~/.cache/skyexp
    save_final: bool = True  # export the final policy in Hugging Face format
    # Checkpoints (skyexp.checkpoint) go to <run dir>/checkpoints: every save_every RL steps, at
    # every stage end, on SIGTERM and when non-finite steps stop the run.
    save_every: int = 0  # 0: only at stage ends (and when stopped)
    keep_last: int = 2  # checkpoints kept (0: all)
    # "": start afresh | auto: newest complete checkpoint of the run dir | a checkpoint dir
    resume: str = ""
    max_bad_steps: int = 3  # stop (with a checkpoint) after this many non-finite steps in a row
    # warn after this many RL steps in a row with 0 optimizer steps (0: never)
    max_idle_steps: int = 5
    stop_idle: bool = False  # ... and stop there (exit code 4) instead of going on
    # > 0: the job runs itself under torchrun, N ranks per node (skyexp/launch.py)
    nproc_per_node: int = 0
    # Disaggregated placement (skyexp.rl.placement): the first rollout_ranks ranks only generate
    # (rollout.name's engine), the others train (FSDP2 among themselves) and stream the weights to
    # them after each optimizer step. 0: every rank generates and trains.
    rollout_ranks: int = 0
    # The longest a rank waits for another (a trainer for its next batch, a generator for the
    # weights it needs, a weight transfer) before the run stops with a checkpoint naming the rank.
    # Set it above (rollout.staleness + 1) x the longest step.
    sync_timeout_s: float = 1800.0


@dataclass
class DebugConfig:
    """The debug overlay's limits (conf/debug/tiny.yaml sets enabled; skyexp.config.debug applies
    them): any recipe shrunk to its tiny twin, stage structure kept."""

    enabled: bool = False
    max_rl_steps: int = 30  # RL steps over all stages (each stage keeps its share, at least 1)
    max_response_len: int = 64  # the last stage's cap
    min_response_len: int = 32  # the first stage's (stages between: linear in the recipe's caps)
    max_n: int = 8  # samples per prompt
    max_batch_size: int = 16  # prompts per step
    # The entropy target, scaled to the tiny model: entropy.target = entropy_target_ratio x
    # entropy_start, the tiny model's measured mean token entropy at its first RL steps
    # (0: the recipe's target is kept). A 7B recipe's target (Skywork-OR1: 0.2 nats) means
    # nothing for a 1 M-parameter model whose entropy starts elsewhere.
    entropy_start: float = 0.0
    entropy_target_ratio: float = 1.0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    entropy: EntropyConfig = field(default_factory=EntropyConfig)
    temperature: TemperatureConfig = field(default_factory=TemperatureConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)


@dataclass
class EvalRunConfig(Config):
    """Schema of conf/eval.yaml (`python -m skyexp.eval`): the training groups plus what to
    evaluate."""

    # eval group options evaluated one after another, each composed as `eval=<name>` with the
    # command line's other overrides (so `eval.n=64` applies to all); empty: the composed `eval`.
    benchmarks: list[str] = field(default_factory=list)
    # Model directories to compare (one pass@k line each); empty: model.path (or the tiny model).
    checkpoints: list[str] = field(default_factory=list)


def old_logprobs_recomputed(c: Config) -> bool:
    """Whether the trainer recomputes the old log-probs (algo.old_logprobs): recompute, or auto
    with a sampler other than the trainer's own model (rollout.name != hf, e.g. vLLM)."""
    mode = c.algo.old_logprobs
    return mode == "recompute" or (mode == "auto" and c.rollout.name != "hf")


def config_hash(*parts: Any) -> str:
    """Stable short hash of config sections (dataclasses or plain values), for caches."""
    blob = json.dumps(
        [
            OmegaConf.to_container(OmegaConf.structured(p))
            if hasattr(p, "__dataclass_fields__")
            else p
            for p in parts
        ],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
