"""`python -m skyexp [overrides]`: compose the Hydra config, validate it, train."""

from __future__ import annotations

from skyexp.cli import hydra_command, register_schema

__all__ = ["main", "register_schema"]


def _train(cfg, run_dir, plain):
    from skyexp.train import train

    return train(cfg, run_dir, plain)


def main() -> None:
    hydra_command(_train)()


if __name__ == "__main__":
    main()
