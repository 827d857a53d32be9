"""The tiny model is built offline, deterministically, and reloads with the Auto classes."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from skyexp.config import ModelConfig
from skyexp.model.loading import (
    build_tiny,
    build_tiny_tokenizer,
    load_model,
    load_tokenizer,
    num_params,
)


def test_tiny_reloads_with_auto_classes(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert model.config.model_type == "qwen2"
    assert 100_000 < num_params(model) < 5_000_000
    assert tok.eos_token_id == model.config.eos_token_id


def test_token_ids_round_trip(tiny_dir):
    """AutoTokenizer rebuilds Qwen's pre-tokenizer; ids must equal the ones the builder produces."""
    built = build_tiny_tokenizer()
    loaded = AutoTokenizer.from_pretrained(tiny_dir)
    texts = [
        "Compute ((6*9)+4)*1.\n6*9=54. 54+4=58. 58*1=58. \\boxed{58}",
        "Let $x^2 = 16$; then \\frac{1}{2} + 12345 -> ünïcode ☃ tabs\tand\nnewlines",
        "<|im_start|>user\nhi<|im_end|>",
    ]
    for t in texts:
        a = built(t, add_special_tokens=False)["input_ids"]
        b = loaded(t, add_special_tokens=False)["input_ids"]
        assert a == b
        assert loaded.decode(b) == t
    # whole-word merges survive the reload: 'Compute' is one token
    assert len(loaded("Compute", add_special_tokens=False)["input_ids"]) == 1


def test_build_is_deterministic(tmp_path):
    cfg = ModelConfig(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128)
    build_tiny(cfg, tmp_path / "a")
    build_tiny(cfg, tmp_path / "b")
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "a").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "b").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_loader_pads_left_and_has_pad(tiny_dir):
    tok = load_tokenizer(str(tiny_dir), ModelConfig())
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    model = load_model(str(tiny_dir), ModelConfig())
    assert next(model.parameters()).dtype == torch.float32
