""""AI, suggest a question": what the model is asked, and how its answer becomes one question for the input box.

Small models ramble: several lines, a preamble ("Sure! Here's a question:"), numbering, quotes, markdown, the
instruction echoed back, an answer cut mid-word at the length limit. :func:`clean` keeps one question — the first
line that is one, whole — or nothing, so that the UI can say the model gave nothing usable rather than paste noise.
"""

from __future__ import annotations

import re

PROMPT = {
    "en": "Suggest one interesting, specific question someone might ask an AI assistant. "
          "Reply with the question only, in English, in one sentence.",
    "zh": "请提出一个有趣而具体的、可以向 AI 助手提问的问题。只回复这个问题本身，用中文，一句话。",
}
MAX_CHARS = 240
_LEAD = re.compile(r"^\s*(?:[-*•>#]+|\d+[.)]|question\s*:|问题[:：])\s*", re.IGNORECASE)
_PREAMBLE = re.compile(r"^(?:sure|okay|ok|here(?:'s| is)|certainly|of course|好的|当然)\b.*?[:：!！]\s*$",
                       re.IGNORECASE)
_ENDS = ("?", "？")


def prompt(lang: str) -> str:
    return PROMPT.get(lang, PROMPT["en"])


def clean(answer: str, lang: str = "en") -> str:
    """One question out of the model's answer; '' when there is none worth showing."""
    instruction = {_key(text) for text in PROMPT.values()}
    candidates = []
    for line in answer.replace("\r", "").split("\n"):
        line = _LEAD.sub("", line.strip())
        line = line.replace("**", "").replace("__", "").strip().strip('"“”「」『』\'`').strip()
        if not line or _PREAMBLE.match(line) or _key(line) in instruction or _echoes(line):
            continue
        candidates.append(line)
    for line in candidates:  # a whole question first
        cut = _first_question(line)
        if cut:
            return cut
    return ""


def _first_question(line: str) -> str:
    """The line up to and including its first question mark, if it is a sensible length."""
    for index, char in enumerate(line):
        if char in _ENDS:
            question = line[: index + 1].strip()
            return question if 4 <= len(question) <= MAX_CHARS else ""
    return ""


def _echoes(line: str) -> bool:
    lowered = line.lower()
    return "suggest one interesting" in lowered or "reply with the question only" in lowered or "请提出一个" in line


def _key(text: str) -> str:
    return re.sub(r"\W+", "", text.lower())
