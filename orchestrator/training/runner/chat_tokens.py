"""Prompt-completion rows -> token ids, with the text of every message kept as ordinary text.

A chat template writes its control tokens (``<|im_start|>``, ``<|im_end|>``, harmony's ``<|start|>``,
``<|message|>``, ``<|end|>``...) as strings, and a tokenizer turns every special-token string it finds
into that token. TRL and Unsloth tokenize the whole rendered conversation, so the same strings in a
message (a model's reply holding ``<|im_end|>\\n<|im_start|>system\\n...``) became control tokens too:
a reply could write its own system turns into its future training data.

Here the template renders each row once with a random placeholder in place of each message's text;
only the special tokens of that rendering (the template's own) become control tokens. Everything
between them, template text and message text together, is tokenized with ``split_special_tokens``,
so a special-token string in a message becomes the ids of its characters: what the model must
generate to write that text. A row without such strings gets exactly the ids the tokenizer's own
``apply_chat_template(..., tokenize=True)`` gives (tested), so the trainer sees the same data as
before, minus the smuggled control tokens.

A row whose text the template changes or inspects (the rendering with the real text is not the
placeholder rendering with the text put back) or refuses (gpt-oss's template raises on some channel
tags) is left out with the reason, never trained on in a form nobody checked.
"""

from __future__ import annotations

import re
import secrets


class RowRefused(ValueError):
    """This row cannot be tokenized with its text kept as text; the message says why."""


def special_tokens(tokenizer) -> list[str]:
    """The strings the tokenizer turns into special (control) tokens, longest first."""
    found = {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    found |= set(tokenizer.all_special_tokens)
    return sorted((t for t in found if t), key=lambda t: (-len(t), t))


def special_ids(tokenizer) -> set[int]:
    return {tokenizer.convert_tokens_to_ids(t) for t in special_tokens(tokenizer)}


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _pieces(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, written by the template) pieces, checked against the
    template's own rendering of the real text."""
    nonce = secrets.token_hex(8)
    marks = [f"RSIMSG{nonce}N{i}E" for i in range(len(messages))]
    masked = [{**m, "content": mark} for m, mark in zip(messages, marks)]
    try:
        layout = _render(tokenizer, masked, add_generation_prompt)
        real = _render(tokenizer, messages, add_generation_prompt)
    except Exception as exc:  # noqa: BLE001 - a template's raise_exception, or any error rendering this text
        raise RowRefused(f"the chat template refuses it ({type(exc).__name__}: {str(exc)[:200]})") from None
    parts = re.split(f"RSIMSG{nonce}N(\\d+)E", layout)
    for transform in (lambda s: s, str.strip):  # some templates trim message text
        pieces = [(parts[0], True)]
        for i in range(1, len(parts), 2):
            pieces += [(transform(messages[int(parts[i])]["content"]), False), (parts[i + 1], True)]
        if "".join(text for text, _ in pieces) == real:
            return [(text, template) for text, template in pieces if text]
    raise RowRefused("the chat template changes or inspects message text (its rendering of the real text "
                     "is not its rendering of a placeholder with the text put back)")


def encode_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False,
                specials: re.Pattern | None = None) -> list[int]:
    """The ids of ``messages`` rendered by the tokenizer's chat template: the template's special
    tokens as control tokens, every message's text as ordinary text. Raises RowRefused."""
    if specials is None:
        specials = re.compile("|".join(map(re.escape, special_tokens(tokenizer))) or "(?!)")
    ids: list[int] = []
    buffer: list[str] = []

    def flush() -> None:
        if buffer:
            text = "".join(buffer)
            ids.extend(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
            buffer.clear()

    for text, by_template in _pieces(tokenizer, messages, add_generation_prompt):
        if not by_template:
            buffer.append(text)
            continue
        pos = 0
        for m in specials.finditer(text):
            buffer.append(text[pos:m.start()])
            flush()
            ids.append(tokenizer.convert_tokens_to_ids(m.group()))
            pos = m.end()
        buffer.append(text[pos:])
    flush()
    return ids


def encode_row(tokenizer, row: dict, max_length: int | None = None, specials: re.Pattern | None = None) -> dict:
    """A prompt-completion row (conversational) as ``input_ids`` and ``completion_mask`` (1: the reply's
    tokens, the only ones in the loss), as TRL/Unsloth build them. A row longer than ``max_length`` is
    left out with its reason, never cut: a cut reply would teach the model a turn without its end."""
    prompt_ids = encode_chat(tokenizer, row["prompt"], add_generation_prompt=True, specials=specials)
    ids = encode_chat(tokenizer, row["prompt"] + row["completion"], specials=specials)
    n = 0  # the completion starts where the two diverge (TRL's common_prefix_length)
    while n < min(len(prompt_ids), len(ids)) and prompt_ids[n] == ids[n]:
        n += 1
    if n == len(ids):
        raise RowRefused("the reply adds no tokens to the prompt")
    mask = [0] * n + [1] * (len(ids) - n)
    if max_length and len(ids) > max_length:
        if n >= max_length:
            raise RowRefused(f"the prompt alone fills max_length ({max_length} tokens)")
        raise RowRefused(f"the reply does not fit max_length ({len(ids)} tokens > {max_length}): left out, "
                         "not cut (a cut reply has no end of turn)")
    return {"input_ids": ids, "completion_mask": mask}


def encode_rows(tokenizer, rows: list[dict], max_length: int | None = None) -> tuple[list[dict], list[str]]:
    """(tokenized rows, one line per row left out: 'sample N: reason')."""
    specials = re.compile("|".join(map(re.escape, special_tokens(tokenizer))) or "(?!)")
    out, left_out = [], []
    for n, row in enumerate(rows, start=1):
        try:
            out.append(encode_row(tokenizer, row, max_length, specials))
        except RowRefused as exc:
            left_out.append(f"sample {n}: {exc}")
    return out, left_out
