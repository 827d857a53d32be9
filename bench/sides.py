"""The two frameworks under test, each stepped one RL step at a time and timed per phase.

skyexp runs `skyexp.rl.step.rl_step`, the function `python -m skyexp` calls each step, on a Run set
up with the trainer's own helpers (policy, engine, optimizer). TRL runs `GRPOTrainer.train()`; a
callback times each step from `on_step_begin` to `on_step_end` (generation, scoring, loss,
backward, optimizer step) and, if asked, runs the other framework's step right after, so the two
are measured interleaved, under the same load. Phase times of TRL come from wrapping its
`_generate_and_score_completions` and `_calculate_rewards` methods (timing only).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from common import (
    ParityReward,
    Work,
    compose_config,
    matmul_params,
    prompt_schedule,
    trl_parity_reward,
)


def prompt_lists(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """Sorted distinct prompts of a batch, without padding."""
    return sorted({tuple(r[m.bool()].tolist()) for r, m in zip(ids, mask)})


class NullLogger:
    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def close(self) -> None:
        pass


class RecordingEngine:
    """Passes calls to the engine and keeps the last rollout (to count its tokens)."""

    def __init__(self, engine: Any):
        self.engine, self.model, self.last = engine, engine.model, None

    def generate(self, *args: Any, **kwargs: Any):
        self.last = self.engine.generate(*args, **kwargs)
        return self.last

    def sync_weights(self, policy: torch.nn.Module) -> None:
        self.engine.sync_weights(policy)


class SkyexpSide:
    name = "skyexp"

    def __init__(self, work: Work, cache_dir: str, threads: int, run_dir: Path):
        from skyexp import distributed
        from skyexp.config.algorithm import build_algorithm
        from skyexp.config.stages import plan_run
        from skyexp.data import load_task
        from skyexp.model import loading
        from skyexp.rl.boundaries import make_optimizer, make_sampler
        from skyexp.rl.state import Counters, Live, Run
        from skyexp.rl.update import UpdateSettings
        from skyexp.rollout import engine_for

        self.cfg = cfg = compose_config(work, cache_dir, threads)
        d = distributed.setup(
            cfg.trainer.device, cfg.trainer.threads, cfg.trainer.keep_freed_memory
        )
        self.path = loading.resolve_path(cfg.model, cfg.trainer.cache_dir)
        self.tokenizer = loading.load_tokenizer(self.path, cfg.model)
        policy = loading.load_policy(self.path, cfg, d)
        seed = cfg.trainer.seed * 1000 + d.rank
        self.engine = RecordingEngine(engine_for(cfg, self.path, self.tokenizer, d.device, seed))
        # optimizer, LR schedule and prompt sampler, as train.setup() builds them
        opt, sched = make_optimizer(cfg, policy)
        problems = load_task(cfg.data).train
        self.run = Run(
            cfg,
            d,
            run_dir,
            plan_run(cfg),
            self.tokenizer,
            policy,
            self.engine,
            ParityReward(),
            NullLogger(),
            opt,
            sched,
            problems,
            build_algorithm(cfg),
            UpdateSettings.of(cfg, d.world_size, d.device),
            [],
            Counters(entropy_coef=cfg.entropy.coef),
            Live(make_sampler(cfg, problems, d.rank, d.world_size)),
        )
        policy.train()
        self.stage = self.run.plan.stages[0]
        self.n_params = matmul_params(self.engine.model)
        self.steps: list[dict[str, float]] = []
        self.prompts: list = []

    def step(self) -> dict[str, float]:
        from skyexp.rl.step import rl_step

        t = time.perf_counter()
        m = rl_step(self.run, self.stage).metrics
        step_s = time.perf_counter() - t
        self.run.counters.rl_step += 1
        ro = self.engine.last
        rec = {
            "step_s": step_s,
            "gen_s": m["timing_s/gen"],
            "score_s": m["timing_s/reward"],
            "update_s": step_s - m["timing_s/gen"] - m["timing_s/reward"],
            "gen_tokens": float(ro.response_mask.sum()),
            "seq_tokens": float(ro.attention_mask.sum()),
            "reward": m["critic/score/mean"],
        }
        self.steps.append(rec)
        if (
            not self.prompts
        ):  # the first step's prompt ids, to check both frameworks saw the same ones
            self.prompts = prompt_lists(
                ro.sequences[:, : ro.prompt_len], ro.attention_mask[:, : ro.prompt_len]
            )
        return rec


class StepClock:
    """A transformers TrainerCallback (built lazily: transformers is imported on first use)."""

    def __new__(cls, side: TRLSide, after: Any):
        from transformers import TrainerCallback

        class _Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                side.begin()

            def on_step_end(self, args, state, control, **kw):
                side.end()
                if after is not None:
                    after()

        return _Clock()


class TRLSide:
    name = "trl"

    def __init__(
        self,
        work: Work,
        path: str,
        cfg: Any,
        tokenizer: Any,
        steps: int,
        threads: int,
        out_dir: Path,
        after: Any = None,
    ):
        from datasets import Dataset
        from transformers import AutoModelForCausalLM
        from trl import GRPOConfig, GRPOTrainer

        torch.set_num_threads(threads)
        rows = prompt_schedule(cfg, tokenizer, steps)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        self.n_params = matmul_params(model)
        args = GRPOConfig(
            output_dir=str(out_dir),
            per_device_train_batch_size=work.prompts * work.samples,
            num_generations=work.samples,
            max_completion_length=work.max_new_tokens,
            temperature=1.0,
            top_p=1.0,
            beta=0.0,
            num_iterations=1,
            gradient_accumulation_steps=1,
            loss_type="dapo",
            epsilon=0.2,
            learning_rate=work.lr,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            max_grad_norm=1.0,
            max_steps=steps,
            seed=work.seed,
            shuffle_dataset=False,
            # TRL's fastest CPU setting: checkpointing off (on by default), fp32 (bf16 on by
            # default)
            use_cpu=True,
            bf16=False,
            fp16=False,
            activation_checkpointing=False,
            report_to="none",
            logging_steps=10**6,
            save_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        self.trainer = GRPOTrainer(
            model=model,
            reward_funcs=trl_parity_reward,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=[StepClock(self, after)],
        )
        from transformers import PrinterCallback

        self.trainer.remove_callback(PrinterCallback)  # its end-of-training summary line
        self.checkpointing = bool(getattr(self.trainer.model, "is_activation_checkpointing", False))
        self._wrap("_generate_and_score_completions", "gen_score_s", self._count)
        self._wrap("_calculate_rewards", "score_s")
        self.steps: list[dict[str, float]] = []
        self.prompts: list = []
        self._cur: dict[str, float] = {}

    def _wrap(self, name: str, key: str, on_result: Any = None) -> None:
        inner = getattr(self.trainer, name)

        def timed(*args: Any, **kwargs: Any):
            t = time.perf_counter()
            out = inner(*args, **kwargs)
            self._cur[key] = self._cur.get(key, 0.0) + time.perf_counter() - t
            if on_result is not None:
                on_result(out)
            return out

        setattr(self.trainer, name, timed)

    def _count(self, out: dict[str, Any]) -> None:
        if not self.prompts:
            self.prompts = prompt_lists(out["prompt_ids"], out["prompt_mask"])
        gen = float(out["completion_mask"].sum())
        self._cur["gen_tokens"] = gen
        self._cur["seq_tokens"] = gen + float(out["prompt_mask"].sum())

    def begin(self) -> None:
        self._cur = {}
        self._t = time.perf_counter()

    def end(self) -> None:
        step_s = time.perf_counter() - self._t
        c = self._cur
        self.steps.append(
            {
                "step_s": step_s,
                "gen_s": c["gen_score_s"] - c.get("score_s", 0.0),
                "score_s": c.get("score_s", 0.0),
                "update_s": step_s - c["gen_score_s"],
                "gen_tokens": c["gen_tokens"],
                "seq_tokens": c["seq_tokens"],
            }
        )

    def train(self) -> None:
        self.trainer.train()
