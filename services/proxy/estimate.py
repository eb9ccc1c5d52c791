"""Token estimates for when no upstream count exists (the mock provider, a stream
cancelled before its usage arrived, an upstream that reports none).

A deliberately simple rule — about four characters of English per token, which
is what OpenAI documents for its tokenizers — so that figures are plausible and
deterministic. Anything recorded from an estimate carries ``estimated: true``.
"""

from __future__ import annotations

import orjson

from shared.openai_chat import ChatCompletionRequest, TextPart

CHARS_PER_TOKEN = 4
# Chat formats wrap every message in a few tokens of role markup.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3


def chars_tokens(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN) if chars > 0 else 0


def text_tokens(text: str) -> int:
    return chars_tokens(len(text))


def prompt_tokens(request: ChatCompletionRequest) -> int:
    total = TOKENS_PER_REPLY
    for message in request.messages:
        total += TOKENS_PER_MESSAGE
        content = message.content
        if isinstance(content, str):
            total += text_tokens(content)
        elif content is not None:
            for part in content:
                if isinstance(part, TextPart):
                    total += text_tokens(part.text)
                else:
                    # Images and audio are billed by size, which we cannot know here;
                    # OpenAI's low-detail image cost is a fair floor.
                    total += 85
        for call in message.tool_calls or ():
            total += text_tokens(call.function.name) + text_tokens(call.function.arguments)
    for tool in request.tools or ():
        total += chars_tokens(len(orjson.dumps(tool)))
    return total


def last_user_text(request: ChatCompletionRequest) -> str:
    for message in reversed(request.messages):
        if message.role != "user":
            continue
        if isinstance(message.content, str):
            return message.content
        if message.content is not None:
            return " ".join(p.text for p in message.content if isinstance(p, TextPart))
        return ""
    return ""
