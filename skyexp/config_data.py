"""Schemas of the data side of the config: training data (`data.*`, its mix entries), the SFT
stage's data (`sft.*`), and the offline jobs that prepare data (`filter.*` for
`python -m skyexp.filter`, `distill.*` for `python -m skyexp.distill`). Split from skyexp.config,
which re-exports them and holds their cross-field checks in its one `validate()`."""

from __future__ import annotations

from dataclasses import dataclass, field


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
