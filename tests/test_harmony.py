"""gpt-oss harmony output: the reply is the final channel, never the analysis (issue 15).

The raw completions below are written in the format gpt-oss produces after the prompt's
``<|start|>assistant`` (openai/harmony's documented token layout); the chat messages are shaped
like vLLM's chat-completions answer for gpt-oss (final channel in ``content``, analysis in
``reasoning_content`` / ``reasoning``)."""

import json

import pytest

from orchestrator.models.harmony import HarmonyError, final_reply, parse, render_sample, reply_from_chat_message

PATCH = json.dumps({"rationale": "use plus", "edits": [{"path": "example.py", "content": "def add(a, b):\n    return a + b\n"}]})
DECOY = json.dumps({"rationale": "decoy", "edits": [{"path": "evil.py", "content": "import os\n"}]})

# analysis first (with a JSON object in it that must never be taken), then the final answer
TYPICAL = ("<|channel|>analysis<|message|>We need to fix add. Maybe reply " + DECOY + " no, the test expects a + b."
           "<|end|><|start|>assistant<|channel|>final<|message|>" + PATCH + "<|return|>")
# a JSON-constrained final message (response_format), with the constrain marker in the header
CONSTRAINED = ("<|channel|>analysis<|message|>Short.<|end|><|start|>assistant<|channel|>final <|constrain|>json"
               "<|message|>" + PATCH + "<|return|>")
# a tool call on the commentary channel before the answer
TOOL = ("<|channel|>commentary to=functions.run_tests <|constrain|>json<|message|>{\"path\": \"tests\"}<|call|>"
        "<|start|>assistant<|channel|>final<|message|>" + PATCH + "<|return|>")
# the budget ran out while reasoning
ONLY_ANALYSIS = "<|channel|>analysis<|message|>Let me think about " + DECOY + " carefully and then"
ONLY_ANALYSIS_ENDED = "<|channel|>analysis<|message|>" + DECOY + "<|end|>"
# the final answer cut off by the token budget (no <|return|>): still the final channel's text
CUT_FINAL = "<|channel|>analysis<|message|>ok<|end|><|start|>assistant<|channel|>final<|message|>{\"rationale\": \"x\""


def test_final_channel_is_the_reply():
    assert final_reply(TYPICAL) == PATCH
    assert final_reply(CONSTRAINED) == PATCH
    assert final_reply(TOOL) == PATCH


def test_analysis_is_never_the_reply():
    for text in (ONLY_ANALYSIS, ONLY_ANALYSIS_ENDED):
        with pytest.raises(HarmonyError, match="no final-channel reply.*analysis"):
            final_reply(text)
    assert "decoy" not in final_reply(TYPICAL)


def test_parse_structure():
    msgs = parse(TYPICAL)
    assert [(m.role, m.channel, m.terminated) for m in msgs] == [("assistant", "analysis", True),
                                                                  ("assistant", "final", True)]
    tool = parse(TOOL)[0]
    assert tool.channel == "commentary" and tool.recipient == "to=functions.run_tests" and tool.content_type == "json"
    assert parse(CONSTRAINED)[1].content_type == "json"
    cut = parse(CUT_FINAL)
    assert cut[-1].channel == "final" and not cut[-1].terminated
    assert final_reply(CUT_FINAL) == '{"rationale": "x"'


def test_plain_text_passes_and_stray_markup_fails():
    assert final_reply(PATCH) == PATCH  # a server that already stripped the markup
    with pytest.raises(HarmonyError):
        final_reply("<|start|>assistant<|end|>")


def test_chat_message_from_vllm():
    assert reply_from_chat_message({"role": "assistant", "content": PATCH, "reasoning_content": DECOY}) == PATCH
    assert reply_from_chat_message({"role": "assistant", "content": PATCH, "reasoning": DECOY}) == PATCH
    assert reply_from_chat_message({"role": "assistant", "content": TYPICAL}) == PATCH  # raw text passed through
    with pytest.raises(HarmonyError, match="only analysis"):
        reply_from_chat_message({"role": "assistant", "content": None, "reasoning_content": DECOY})
    with pytest.raises(HarmonyError, match="no final-channel reply"):
        reply_from_chat_message({"role": "assistant", "content": "  "})


def test_training_sample_keeps_the_served_format():
    text = render_sample([{"role": "system", "content": "Reply with JSON."}, {"role": "user", "content": "fix"},
                          {"role": "assistant", "content": PATCH}], reasoning_effort="low")
    assert text.startswith("<|start|>system<|message|>Reasoning: low<|end|><|start|>developer<|message|>Reply with JSON.")
    assert text.endswith("<|start|>assistant<|channel|>final<|message|>" + PATCH + "<|return|>")
    assert "analysis" not in text
    assert final_reply(text.split("<|start|>assistant", 1)[1]) == PATCH
    with pytest.raises(ValueError):
        render_sample([], reasoning_effort="max")
