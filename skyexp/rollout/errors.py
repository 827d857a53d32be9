"""What an engine raises when its optional dependency is missing. Its own module, so an engine
(rollout/vllm.py) can raise it without importing the package that builds engines."""

from __future__ import annotations


class MissingExtraError(ImportError):
    """The chosen engine's optional dependency is not installed; the message names the extra."""
