"""SFT examples: (prompt text, response text) pairs for the SFT stage's response-only loss.

Two row formats (sft.format):
- pairs: a prompt field and a response field; the prompt is a problem, wrapped in the data
  template like an RL prompt.
- conversation: a message list, as the hub SFT sets ship (NovaSky-AI/Sky-T1-7B-step1-sft-5k and
  Sky-T1_data_17k use ShareGPT `conversations: [{from, value}]` with a top-level `system`; TRL and
  `python -m skyexp.distill` use OpenAI `messages: [{role, content}]`). The last message must be
  the assistant's: it is the response; everything before it (system prompt included) is the
  prompt, rendered as written through the model's chat template (or as plain text).
"""

from __future__ import annotations

from typing import Any

from skyexp.data.rows import get_path

ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
}


def parse_conversation(
    row: dict[str, Any], messages_key: str, system_key: str
) -> tuple[list[dict[str, str]], str] | str:
    """A conversation row -> (prompt messages, response), or the reason it is unusable."""
    msgs = get_path(row, messages_key)
    if not isinstance(msgs, list) or not msgs:
        return f"'{messages_key}' is not a non-empty message list"
    system = row.get(system_key)
    out = (
        [{"role": "system", "content": system}]
        if isinstance(system, str) and system.strip()
        else []
    )
    for m in msgs:
        role = ROLES.get(m.get("role", m.get("from"))) if isinstance(m, dict) else None
        content = m.get("content", m.get("value")) if isinstance(m, dict) else None
        if role is None or not isinstance(content, str):
            return (
                f"malformed message in '{messages_key}' (needs role/content or from/value strings)"
            )
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "assistant" or not out[-1]["content"].strip():
        return f"'{messages_key}' does not end with a non-empty assistant message"
    if not any(m["role"] == "user" for m in out[:-1]):
        return f"'{messages_key}' has no user message before the response"
    return out[:-1], out[-1]["content"]


def parse_pair(row: dict[str, Any], prompt_key: str, response_key: str) -> tuple[str, str] | str:
    """A pairs row -> (problem, response), or the reason it is unusable."""
    prompt, response = get_path(row, prompt_key), get_path(row, response_key)
    if not isinstance(prompt, str) or not prompt.strip():
        return f"missing or non-string '{prompt_key}'"
    if not isinstance(response, str) or not response.strip():
        return f"missing or empty '{response_key}'"
    return prompt.strip(), response.strip()
