"""What becomes of a model's answer to "suggest a question"."""

import pytest

from tasks.suggestions import PROMPT, clean


@pytest.mark.parametrize(("answer", "question"), [
    ('"What makes a queue fair?"', "What makes a queue fair?"),
    ("Sure! Here's a question:\n\n**How do bees decide where to build a hive?**", "How do bees decide where to build a hive?"),
    ("1. Why is the sky blue? 2. Why is grass green?", "Why is the sky blue?"),
    (PROMPT["en"] + "\nWhat is the oldest known recipe?", "What is the oldest known recipe?"),
    ("Question: How far away is the horizon at sea?\nThis is a great question because", "How far away is the horizon at sea?"),
    ("为什么猫喜欢纸箱？", "为什么猫喜欢纸箱？"),
    ("好的：\n「宇宙有多大？」", "宇宙有多大？"),
])
def test_one_whole_question_is_kept(answer: str, question: str) -> None:
    assert clean(answer) == question


@pytest.mark.parametrize("answer", [
    "",
    "Here is a question you could ask an AI assist",      # cut at the length limit: no question mark
    PROMPT["en"],                                          # the instruction echoed
    "Sure!",
    "?",
])
def test_nothing_usable_is_nothing(answer: str) -> None:
    assert clean(answer) == ""
