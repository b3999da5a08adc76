"""gpt-oss replies in OpenAI's harmony format: the answer is the final channel, never the analysis.

gpt-oss writes its reasoning to the ``analysis`` channel (not safe to show or to act on: it is not
trained to follow the output format), tool preambles/calls to ``commentary``, and its answer to
``final``. A completion, as raw text after the prompt's ``<|start|>assistant``, looks like::

    <|channel|>analysis<|message|>We need to fix add...<|end|><|start|>assistant<|channel|>final<|message|>{"edits": ...}<|return|>

Served through vLLM's chat API, the final channel is ``message.content`` and the analysis goes to
``message.reasoning_content`` (``reasoning`` in newer vLLM). Both entry points here take the reply
from the final channel only; when there is none (the model spent its budget reasoning), the caller
gets ``HarmonyError``, never the analysis text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

START, MESSAGE, END, RETURN, CALL, CHANNEL, CONSTRAIN = (
    "<|start|>", "<|message|>", "<|end|>", "<|return|>", "<|call|>", "<|channel|>", "<|constrain|>")
_STOPS = re.compile(r"<\|(?:end|return|call)\|>")
_SPECIAL = re.compile(r"<\|[a-z_]+\|>")
REASONING_EFFORTS = ("low", "medium", "high")


class HarmonyError(ValueError):
    """No final-channel reply in the model's output."""


@dataclass(frozen=True)
class HarmonyMessage:
    role: str            # "assistant" (or "" when the header carried none)
    channel: str         # "analysis" | "commentary" | "final" | "" (no channel)
    content: str
    recipient: str = ""  # "to=functions.x" tool calls
    content_type: str = ""  # after <|constrain|>, e.g. "json"
    terminated: bool = True  # ended by <|end|>/<|return|>/<|call|> (False: cut off by the token budget)


def _header(text: str) -> tuple[str, str, str, str]:
    """(role, channel, recipient, content_type) from a message header such as
    ``assistant<|channel|>final`` or ``assistant to=functions.f<|channel|>commentary <|constrain|>json``."""
    text = text.replace(START, "")
    content_type = ""
    if CONSTRAIN in text:
        text, _, content_type = text.partition(CONSTRAIN)
        content_type = content_type.strip()
    head, _, channel_part = text.partition(CHANNEL)
    channel_words = channel_part.split()
    channel = channel_words[0] if channel_words else ""
    recipient = next((w for w in head.split() + channel_words[1:] if w.startswith("to=")), "")
    role_words = [w for w in head.split() if not w.startswith("to=")]
    return (role_words[0] if role_words else ""), channel, recipient, content_type


def parse(text: str) -> list[HarmonyMessage]:
    """The messages of a harmony completion (raw text, special tokens kept)."""
    messages = []
    pos = 0
    while True:
        at = text.find(MESSAGE, pos)
        if at < 0:
            break
        header = text[pos:at]
        if START in header:
            header = header[header.rfind(START):]
        stop = _STOPS.search(text, at + len(MESSAGE))
        body_end = stop.start() if stop else len(text)
        role, channel, recipient, content_type = _header(header)
        messages.append(HarmonyMessage(role=role or "assistant", channel=channel,
                                       content=text[at + len(MESSAGE):body_end], recipient=recipient,
                                       content_type=content_type, terminated=stop is not None))
        if not stop:
            break
        pos = stop.end()
    return messages


def final_reply(text: str) -> str:
    """The content of the last final-channel message of a raw harmony completion.

    Text with no harmony markup at all (a server that already stripped it) is returned as is;
    markup without a final channel raises ``HarmonyError``: the analysis is never the reply."""
    if MESSAGE not in text and CHANNEL not in text:
        if _SPECIAL.search(text):
            raise HarmonyError("harmony output without any message")
        return text
    finals = [m for m in parse(text) if m.channel == "final" and not m.recipient]
    if not finals:
        channels = sorted({m.channel or "none" for m in parse(text)})
        raise HarmonyError(f"no final-channel reply (the model wrote only: {', '.join(channels) or 'nothing'})")
    return finals[-1].content.strip()


def reply_from_chat_message(message: dict) -> str:
    """The reply from an OpenAI chat-completions ``message`` served for gpt-oss (vLLM).

    ``content`` is the final channel; ``reasoning_content`` / ``reasoning`` (the analysis) is
    ignored. A server that passes the raw harmony text through in ``content`` is parsed."""
    content = message.get("content")
    if not content or not content.strip():
        had_reasoning = bool(message.get("reasoning_content") or message.get("reasoning"))
        raise HarmonyError("no final-channel reply" + (" (only analysis: the token budget ran out while the model "
                                                         "was reasoning; lower reasoning_effort or raise max_tokens)"
                                                         if had_reasoning else ""))
    return final_reply(content)


def render_sample(messages: list[dict], reasoning_effort: str = "low") -> str:
    """A conversation in harmony text, as gpt-oss is served (for training samples and tests):
    the system message carries the reasoning effort, the assistant's reply goes to the final channel
    and ends with <|return|>; no analysis is trained on."""
    if reasoning_effort not in REASONING_EFFORTS:
        raise ValueError(f"reasoning_effort must be one of {', '.join(REASONING_EFFORTS)}")
    parts = [f"{START}system{MESSAGE}Reasoning: {reasoning_effort}{END}"]
    for m in messages:
        if m["role"] == "assistant":
            parts.append(f"{START}assistant{CHANNEL}final{MESSAGE}{m['content']}{RETURN}")
        else:
            role = "developer" if m["role"] == "system" else m["role"]
            parts.append(f"{START}{role}{MESSAGE}{m['content']}{END}")
    return "".join(parts)
