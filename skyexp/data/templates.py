"""Prompt templates: the text around a problem, as config (conf/template/, data.prompt_template,
data.system_prompt, data.response_prefix).

A template has a user part with `{problem}` in it, an optional system prompt, and an optional
prefix that starts the response (DeepSeek-R1's `<think>\\n`). With `model.chat_template=true`
and a tokenizer that has a chat template, the messages go through it (generation prompt
appended) and the prefix follows; otherwise the prompt is plain text: the system prompt, a
blank line, the user part, the prefix.

Which system prompt: the template's when it has one (Sky-T1 replaces the dataset's), else the
row's own (meta['system'], e.g. Eurus-2-RL-Data's unless data.strip_system), else none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from skyexp.config import DataConfig


@dataclass(frozen=True)
class Template:
    user: str = "{problem}"
    system: str = ""
    prefix: str = ""  # appended after the prompt: the first tokens of the response


def template_of(d: DataConfig) -> Template:
    return Template(d.prompt_template, d.system_prompt, d.response_prefix)


def _has_chat(tokenizer: Any, chat: bool) -> bool:
    return bool(chat and tokenizer is not None and getattr(tokenizer, "chat_template", None))


def render_messages(
    messages: list[dict[str, str]], tokenizer: Any = None, chat: bool = False, prefix: str = ""
) -> str:
    """Messages ({role, content}, the last one not from the assistant) -> prompt text."""
    if _has_chat(tokenizer, chat):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "\n\n".join(m["content"] for m in messages if m["content"])
    return text + prefix


def apply_template(
    problem: str,
    template: str | Template,
    tokenizer: Any = None,
    chat: bool = False,
    system: str = "",
) -> str:
    """The prompt for one problem. `template` is a Template, or just its user part (a string).
    `system` is the row's own system prompt, used when the template has none."""
    t = template if isinstance(template, Template) else Template(template)
    sys_prompt = t.system or system
    messages = ([{"role": "system", "content": sys_prompt}] if sys_prompt else []) + [
        {"role": "user", "content": t.user.replace("{problem}", problem)}
    ]
    return render_messages(messages, tokenizer, chat, t.prefix)
