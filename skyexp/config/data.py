"""Schemas of the data side of the config: training data (`data.*`, its mix entries), the SFT
stage's data (`sft.*`), and the offline jobs that prepare data (`filter.*` for
`python -m skyexp.filter`, `distill.*` for `python -m skyexp.distill`). Split from skyexp.config,
which re-exports them; their cross-field checks below run inside its one `validate()`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# check(condition, key, message) raises ConfigError naming the key when the condition fails;
# check_name(value, key) requires a registered data source name. skyexp.config passes both.
Check = Callable[[bool, str, str], None]
CheckName = Callable[[str, str], None]


@dataclass
class MixEntry:
    """One source of a data mix (`data.mix`). Per epoch the source contributes `count` rows when
    count > 0, else round(weight * its rows): 1.0 every row once, 0.5 a seeded half, 2.0 twice."""

    source: str = "jsonl"  # a source name of data.source (not mix or arith)
    path: str = ""  # hub id or local file/directory; empty: the source's own hub id
    split: str = ""  # empty: the source's default split
    weight: float = 1.0
    count: int = 0
    problem_key: str = ""  # jsonl | parquet | hub only; empty: data.problem_key
    answer_key: str = ""  # jsonl | parquet | hub only; empty: data.answer_key
    # verl rows: keep these data_source values
    data_sources: list[str] = field(default_factory=list)


@dataclass
class DataConfig:
    name: str = "arith"
    # arith | still3 | eurus_numina | deepscaler | skywork_or1_math | jsonl | parquet | hub | mix
    source: str = "arith"
    path: str = ""  # hub id or local file/directory; empty for a named source: its hub id
    split: str = ""  # empty: the source's default split (train; Skywork-OR1: math)
    problem_key: str = "problem"  # jsonl | parquet | hub: field names (dotted paths allowed)
    answer_key: str = "answer"
    # verl rows: keep these data_source values
    data_sources: list[str] = field(default_factory=list)
    strip_system: bool = False  # drop the dataset's own system prompt (Eurus-2-RL-Data has one)
    # Keep rows whose value at this dotted path is within difficulty_range (inclusive), e.g.
    # Skywork-OR1's extra_info.model_difficulty.DeepSeek-R1-Distill-Qwen-7B in [1, 15], or the
    # pass_rate column written by `python -m skyexp.filter`. Empty: no difficulty filter.
    difficulty_key: str = ""
    difficulty_range: list[float] = field(default_factory=list)
    # data.source=mix: the sources and their shares
    mix: list[MixEntry] = field(default_factory=list)
    dedup: bool = True  # mix: drop repeated problems (normalised-text hash), first source wins
    decontam: list[str] = field(default_factory=list)  # eval files whose problems never train
    # Prompt: {problem} is replaced by the problem; system_prompt (if any) becomes the system
    # message; response_prefix is appended after the prompt (e.g. "<think>\n"). conf/template/.
    template: str = "custom"
    prompt_template: str = "{problem}"
    system_prompt: str = ""
    response_prefix: str = ""
    max_bad_fraction: float = 0.05  # stop before training if more rows than this are unusable
    # Drop (and count) prompts longer than this many tokens after the template, before training;
    # 0: only those that leave no room for a response in the model's context (skyexp.data.lengths)
    max_prompt_len: int = 0
    shuffle: bool = True
    # Built-in arithmetic task (task_seed also draws the rows of mixes with weight < 1 or counts).
    levels: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    train_size: int = 20000
    eval_size: int = 200
    task_seed: int = 1234
    slip_rate: float = 0.0  # share of worked-solution steps with an arithmetic slip (SFT data only)


@dataclass
class SFTConfig:
    name: str = "arith_warmup"
    steps: int = 0  # 0 disables the SFT stage
    batch_size: int = 64
    lr: float = 2e-3
    lr_min: float = 2e-4
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_len: int = 256
    # Where the responses come from: the data source's worked solutions (data), or an SFT set:
    # a local .jsonl/.json or .parquet file, or a hub id / dataset directory (hub).
    source: str = "data"  # data | jsonl | parquet | hub
    path: str = ""
    split: str = "train"
    # pairs: prompt_key / response_key fields, the prompt wrapped in data.prompt_template;
    # conversation: a message list (messages_key; OpenAI role/content or ShareGPT from/value),
    # the last assistant turn is the response, the turns before it are the prompt, as written.
    format: str = "pairs"  # pairs | conversation
    prompt_key: str = "prompt"
    response_key: str = "response"
    messages_key: str = "conversations"
    system_key: str = "system"  # a top-level system prompt (Sky-T1's SFT sets), when present
    cache: bool = True  # reuse a finished SFT stage with the same config hash


@dataclass
class SampleJob:
    """Sampling settings shared by the offline jobs below (same engine and reward as RL)."""

    out: str = ""  # output jsonl; empty: <job>.jsonl in the run directory
    temperature: float = 1.0
    top_p: float = 1.0
    max_response_len: int = 64
    chunk: int = 256  # prompts sampled per engine call
    size: int = 0  # only the first `size` problems of data.* (0: all)


@dataclass
class FilterConfig(SampleJob):
    """`python -m skyexp.filter`: offline difficulty filtering and decontamination of data.*."""

    n: int = 8  # samples per prompt for its pass rate; 0: no difficulty filtering
    drop_all_wrong: bool = True  # drop pass rate 0 (DeepScaleR, Skywork-OR1)
    drop_all_right: bool = True  # drop pass rate 1
    benchmarks: list[str] = field(default_factory=list)  # eval files to decontaminate against
    benchmark_key: str = "problem"
    ngram: int = 10  # tokens per n-gram
    # contaminated when shared n-grams / n-grams of the shorter problem are at or above this
    overlap: float = 0.6


@dataclass
class DistillConfig(SampleJob):
    """`python -m skyexp.distill`: rejection-sampled SFT data from the current model."""

    k: int = 8  # samples per prompt
    keep: int = 1  # correct responses kept per prompt (0: all of them)


SFT_SOURCES = ("data", "jsonl", "parquet", "hub")
NEEDS_PATH = ("jsonl", "parquet", "hub")  # sources without a hub id of their own


def validate_data(d: DataConfig, check: Check, check_name: CheckName) -> None:
    """Cross-field checks of data.* (called by skyexp.config.checks with its checkers)."""
    check(
        bool(d.levels) and all(1 <= lv <= 6 for lv in d.levels),
        "data.levels",
        "levels must be in 1..6",
    )
    check(0 <= d.max_bad_fraction <= 1, "data.max_bad_fraction", "must be in [0, 1]")
    check(
        d.max_prompt_len >= 0, "data.max_prompt_len", "must be >= 0 (0: the model's context only)"
    )
    check(d.train_size >= 1, "data.train_size", "must be >= 1")
    check(d.eval_size >= 0, "data.eval_size", "must be >= 0")
    check(0 <= d.slip_rate < 1, "data.slip_rate", "must be in [0, 1)")
    check(
        d.source in NEEDS_PATH and bool(d.path) or d.source not in NEEDS_PATH,
        "data.path",
        f"data.source={d.source} needs data.path",
    )
    check("{problem}" in d.prompt_template, "data.prompt_template", "must contain {problem}")
    check(
        len(d.difficulty_range) in (0, 2),
        "data.difficulty_range",
        "needs [min, max] (or [] for no filter)",
    )
    check(
        not d.difficulty_range or d.difficulty_range[0] <= d.difficulty_range[1],
        "data.difficulty_range",
        "min > max",
    )
    check(
        bool(d.difficulty_key) == bool(d.difficulty_range),
        "data.difficulty_key",
        "data.difficulty_key and data.difficulty_range go together",
    )
    check(
        (d.source == "mix") == bool(d.mix),
        "data.mix",
        "data.source=mix needs data.mix entries, and only it uses them",
    )
    for i, m in enumerate(d.mix):
        key = f"data.mix[{i}]"
        check_name(m.source, f"{key}.source")
        check(m.source not in ("mix", "arith"), f"{key}.source", f"'{m.source}' cannot be mixed")
        check(
            m.source not in NEEDS_PATH or bool(m.path),
            f"{key}.path",
            f"source {m.source} needs a path",
        )
        check(m.weight >= 0 and m.count >= 0, f"{key}.weight", "weight and count must be >= 0")
        check(m.weight > 0 or m.count > 0, f"{key}.weight", "weight or count must be > 0")


def validate_sft(s: SFTConfig, check: Check) -> None:
    check(s.steps >= 0, "sft.steps", "must be >= 0")
    check(s.lr > 0, "sft.lr", "must be > 0")
    check(
        0 <= s.lr_min <= s.lr, "sft.lr_min", "must be in [0, sft.lr] (the cosine schedule's floor)"
    )
    check(s.warmup_steps >= 0, "sft.warmup_steps", "must be >= 0")
    check(s.weight_decay >= 0, "sft.weight_decay", "must be >= 0")
    check(s.batch_size >= 1, "sft.batch_size", "must be >= 1")
    check(s.max_len >= 1, "sft.max_len", "must be >= 1")
    check(
        s.source in SFT_SOURCES,
        "sft.source",
        f"'{s.source}' is not one of {', '.join(SFT_SOURCES)}",
    )
    check(s.source == "data" or bool(s.path), "sft.path", f"sft.source={s.source} needs sft.path")
    check(
        s.format in ("pairs", "conversation"),
        "sft.format",
        f"'{s.format}' is not pairs or conversation",
    )


def validate_jobs(f: FilterConfig, d: DistillConfig, check: Check) -> None:
    check(f.n >= 0, "filter.n", "must be >= 0 (0: no difficulty filtering)")
    check(0 < f.overlap <= 1, "filter.overlap", "must be in (0, 1]")
    check(f.ngram >= 1, "filter.ngram", "must be >= 1")
    check(d.k >= 1, "distill.k", "must be >= 1")
    check(d.keep >= 0, "distill.keep", "must be >= 0 (0: every correct response)")
    for key, job in (("filter", f), ("distill", d)):
        check(job.temperature >= 0, f"{key}.temperature", "must be >= 0 (0 = greedy)")
        check(0 < job.top_p <= 1, f"{key}.top_p", "must be in (0, 1]")
        check(job.chunk >= 1, f"{key}.chunk", "must be >= 1")
        check(job.max_response_len >= 1, f"{key}.max_response_len", "must be >= 1")
        check(job.size >= 0, f"{key}.size", "must be >= 0 (0: every problem)")
