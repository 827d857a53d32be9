"""The RL wing: one step's data flow (collect -> objective -> update), the run's state and its
stage boundaries, resume (checkpoints), faults, per-step metrics, the SFT stage, and asynchronous
RL (async_loop, queue; the disaggregated placement: placement, generator, remote)."""
