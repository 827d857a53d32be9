"""The RL wing: one step's data flow (collect -> objective -> update), the run's state and its
stage boundaries, resume (checkpoints), faults, per-step metrics, and the SFT stage."""
