"""Load Hugging Face causal LMs and tokenizers; build the tiny offline model.

A real model is a hub id or a local directory (`model.path`). The tiny model is built from code
(no download): a Qwen2-architecture causal LM of ~1.8M parameters with a byte-level BPE
tokenizer using Qwen's own pre-tokenizer, so AutoTokenizer (which for model_type qwen2 rebuilds
Qwen's digit-splitting pre-tokenizer) reloads it with identical ids. It is saved in Hugging Face
format under the cache directory, keyed by its architecture, and reused. `load_policy` and
`load_reference` give the training copies (FSDP2-sharded across ranks).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from skyexp.config import ModelConfig, config_hash

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Qwen2's pre-tokenizer split pattern: digits split one by one, letters grouped.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Whole words that get one token each (BPE merges): they recur in every arith sample.
TINY_WORDS = ["Compute", "boxed", " \\", "Please", " step"]
EOS = "<|endoftext|>"
TINY_SPECIALS = [EOS, "<|im_start|>", "<|im_end|>"]


def cache_root(configured: str = "") -> Path:
    root = configured or os.environ.get("SKYEXP_CACHE") or str(Path.home() / ".cache" / "skyexp")
    return Path(root).expanduser()


def _byte_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable character map, which ByteLevel pre-tokenizers use.
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    out, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def build_tiny_tokenizer():
    """Byte-level BPE: all 256 bytes (any text round-trips), a few whole-word merges, specials."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    b2u = _byte_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    merges: list[tuple[str, str]] = []
    for word in TINY_WORDS:
        symbols = "".join(b2u[b] for b in word.encode())
        cur = symbols[0]
        for ch in symbols[1:]:
            merges.append((cur, ch))
            cur += ch
            vocab.setdefault(cur, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(TINY_SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=EOS, padding_side="left"
    )


def build_tiny(cfg: ModelConfig, out_dir: Path, seed: int = 0) -> None:
    """Write a freshly initialised tiny Qwen2 model and its tokenizer to out_dir (deterministic)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tiny_tokenizer()
    mcfg = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Qwen2ForCausalLM(mcfg)
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def tiny_path(cfg: ModelConfig, cache_dir: str = "") -> Path:
    """Directory of the tiny model for this architecture, built on first use (atomically)."""
    arch = [
        cfg.hidden_size,
        cfg.num_layers,
        cfg.num_heads,
        cfg.intermediate_size,
        cfg.max_positions,
        TINY_WORDS,
    ]
    path = cache_root(cache_dir) / "models" / f"tiny-{config_hash(arch)}"
    if not (path / "config.json").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".build-"))
        build_tiny(cfg, tmp)
        try:
            tmp.rename(path)
        except OSError:  # another rank or process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def resolve_path(cfg: ModelConfig, cache_dir: str = "") -> str:
    return cfg.path or str(tiny_path(cfg, cache_dir))


def load_tokenizer(path: str, cfg: ModelConfig):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, padding_side="left"
    )
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def context_length(path: str, cfg: ModelConfig) -> int | None:
    """The model's context window in tokens (max_position_embeddings), read from its config only."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(
        path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
    )
    n = getattr(getattr(c, "text_config", c), "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None


def cache_kwarg(model: torch.nn.Module) -> str:
    """The name under which this model's forward takes its KV cache: `cache` from transformers
    5.2x on (where `past_key_values` is deprecated, with a FutureWarning, and due to go in 5.40),
    `past_key_values` before (the vLLM CPU venv pins transformers < 5.20)."""
    import inspect

    fwd = getattr(type(model), "forward", None) or model.forward
    return "cache" if "cache" in inspect.signature(fwd).parameters else "past_key_values"


def load_model(path: str, cfg: ModelConfig, device: torch.device | str = "cpu"):
    """Causal LM from a hub id or a local directory, in the configured dtype, in train mode off."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path,
        revision=cfg.revision,
        dtype=DTYPES[cfg.dtype],
        trust_remote_code=cfg.trust_remote_code,
        attn_implementation=cfg.attn_implementation,
    )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.config.use_cache = False
    return model.to(device)


def load_policy(path: str, cfg: Any, d: Any) -> torch.nn.Module:
    """The policy (cfg: the Config, d: the Dist), FSDP2-sharded over the ranks with trainer.fsdp
    (also a world of one, the same code path as many ranks; there sharding only copies parameters
    and gradients, 6-10% of the update: trainer.fsdp=false trains the plain model)."""
    from skyexp.distributed import shard
    from skyexp.model import sequence_parallel

    sp = cfg.trainer.sp_size
    if sp > 1:  # heads and KV heads against trainer.sp_size, before the weights load
        from transformers import AutoConfig

        mc = AutoConfig.from_pretrained(path, revision=cfg.model.revision,
                                        trust_remote_code=cfg.model.trust_remote_code)
        sequence_parallel.check_model(mc, sp, cfg.model.attn_implementation)
    policy = load_model(path, cfg.model, d.device)
    sequence_parallel.enable(policy, sp, cfg.model.attn_implementation)
    if cfg.trainer.fsdp:
        shard(policy, d, cfg.trainer.offload)
    return policy


def load_reference(path: str, cfg: Any, d: Any) -> torch.nn.Module:
    """A frozen copy of the policy for the KL term, sharded like the policy."""
    return load_policy(path, cfg, d).eval().requires_grad_(False)


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
