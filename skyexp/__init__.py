"""skyexp: RL post-training of reasoning language models (Sky-T1 / Skywork-OR1 recipes, entropy
collapse)."""

__version__ = "0.1.0"
