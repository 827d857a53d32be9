"""The model a run starts from: the SFT stage's result when it is cached, else the base model.

The SFT result is an ordinary Hugging Face checkpoint in the cache, keyed by a hash of everything
that determines it (model, SFT settings, data or the SFT file's content, prompt template, seed).
Training (skyexp.rl.sft writes it) and the offline jobs (skyexp.offline, which sample from the
model RL would start from) share this key.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from skyexp.config import Config, config_hash
from skyexp.data import template_of
from skyexp.model.loading import cache_root


def _source_fingerprint(cfg: Config) -> str:
    """What the SFT data is: the data config's hash for sft.source=data; a local file's content
    hash (a rewritten distill file must not reuse a stale checkpoint); a hub id as named."""
    path = Path(cfg.sft.path)
    if cfg.sft.source == "data":
        return config_hash(cfg.data)
    if path.is_file():
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()[:16]
    return f"{cfg.sft.path}@{cfg.sft.split}"


def cache_dir(cfg: Config, base_path: str) -> Path:
    """Where this config's SFT result lives (whether or not it exists yet)."""
    tmpl = template_of(cfg.data)
    key = config_hash(cfg.model, base_path, cfg.sft, _source_fingerprint(cfg),
                      [tmpl.user, tmpl.system, tmpl.prefix], cfg.trainer.seed)
    return cache_root(cfg.trainer.cache_dir) / "sft" / key


def cached(cfg: Config, base_path: str) -> Path | None:
    """The finished SFT checkpoint for this config, if one exists and caching is on."""
    path = cache_dir(cfg, base_path)
    return path if cfg.sft.cache and (path / "DONE").exists() else None


def start_path(cfg: Config, base_path: str) -> str:
    """The model RL starts from: the cached SFT result when the SFT stage is on and done, else the
    base model. The offline jobs (skyexp.filter, skyexp.distill) sample from the same model."""
    done = cached(cfg, base_path) if cfg.sft.steps else None
    return str(done) if done else base_path
