"""The model wing: what every consumer of a causal LM's weights shares, below rollout, SFT and the
RL update (they import it; it imports none of them).

- loading.py  the tokenizer, the model (HF id, local path or the tiny model built offline), the
              FSDP-sharded policy and the frozen reference; the cache directory
- layout.py   a rollout's rows as tensors: pack, trim, micro-batches (by rows or a token budget),
              the padding-free packing of a micro-batch
- forward.py  the one forward over a micro-batch's response positions (rows, shared prompts or
              padding-free) returning final hidden states, and the passes that apply the head to
              them: token log-probs / entropies, full logits, the no-grad old / reference passes
- head.py     the chunked lm head: log-probs and entropies from hidden states a chunk at a time

Nothing heavy is imported here: `from skyexp.model import loading` costs no transformers import.
"""
