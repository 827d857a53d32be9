"""The findings study: do the seeds' entropy-collapse results reproduce on the tiny twin?

- stats: seed aggregation (mean, sd, 95% t-interval), the entropy-performance law fit
  R = -a exp(H) + b (Cui et al., arXiv 2505.22617), Spearman with a permutation p-value;
- runs: run directories -> records (arm, seed, per-step curves, held-out evals);
- verdicts: F1-F6 with fixed verdict rules; report + figures: docs/findings.md and docs/findings/.

Regenerate: python -m skyexp.findings <sweep dirs...>
"""
