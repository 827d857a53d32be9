"""The offline jobs' bodies, behind the entry shims skyexp/filter.py, distill.py and score.py:
sampling.py (what filter and distill share with training: the model RL would start from, the
configured engine and reward, prompts under the data template), filter.py (decontamination and
difficulty filtering), distill.py (rejection-sampled SFT data), score.py (re-scoring a jsonl of
completions with the training reward)."""
