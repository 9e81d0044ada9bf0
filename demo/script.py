"""What the two users of the tour ask, and what the offline LLM answers.

The tour and the offline LLM both read this module, so a prompt typed in the browser always finds its answer,
whatever order the queue runs the messages in. An answer that a scene needs in the middle of its stream (still
running while others queue up, stopped halfway, retried) is held there until the tour has taken its picture.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Turn:
    prompt: str
    answer: str
    token_delay: float = 0.05
    """Seconds between tokens: 0.05 is 20 tokens a second, a small model on a laptop."""
    thinking: str = ""
    hold_after: int | None = None
    """Offline: stream this many answer tokens, then wait for the tour's go (``POST /_demo/release``)."""


# --- the prompts (the first three are the app's own example prompts, clicked in the empty chat) -------------

LONG = Turn(
    "Explain how a priority queue works, with a small Python example.",
    "A **priority queue** always hands out the most important item first, whenever it arrived. Within one "
    "priority it behaves like an ordinary queue: first in, first out.\n\n"
    "### How it works\n\n"
    "1. Every item gets a **priority** and a **sequence number** when it is added.\n"
    "2. The items sit in a *heap*, ordered by `(priority, sequence)`.\n"
    "3. `pop()` takes the smallest pair: the highest priority, and the oldest item among equals.\n\n"
    "Both operations cost **O(log n)**, so the queue stays fast with thousands of items waiting.\n\n"
    "### A small example\n\n"
    "```python\n"
    "import heapq\n"
    "import itertools\n\n"
    "LEVELS = {\"high\": 0, \"normal\": 1, \"low\": 2}\n"
    "counter = itertools.count()\n"
    "queue = []\n\n"
    "def push(task, priority=\"normal\"):\n"
    "    heapq.heappush(queue, (LEVELS[priority], next(counter), task))\n\n"
    "def pop():\n"
    "    return heapq.heappop(queue)[2]\n\n"
    "push(\"write the report\")\n"
    "push(\"fix the outage\", \"high\")\n"
    "push(\"tidy the desk\", \"low\")\n"
    "print(pop())  # fix the outage\n"
    "```\n\n"
    "The sequence number is what keeps it **fair**: two tasks of the same priority never overtake each other, "
    "and a low-priority task still runs as soon as nothing more urgent is waiting.",
    hold_after=34,  # "1. Every item": the other messages queue up meanwhile
    thinking="The user wants the idea first, then code. A heap with (priority, sequence) tuples shows both "
             "the ordering and the FIFO tie-break. Keep the example short and runnable.",
)

HAIKU = Turn(
    "Write a haiku about waiting in line.",
    "Here is one for everyone in the queue:\n\n"
    "> *A ticket in hand —*  \n"
    "> *the line moves one step forward,*  \n"
    "> *spring rain on the glass.*\n\n"
    "Every message gets its turn here, so even a poem waits politely.",
)

COMMIT_TIPS = Turn(
    "What are three tips for writing clear commit messages?",
    "Here are three habits that make a history easy to read:\n\n"
    "1. **Write a short summary line** (50 characters or fewer) in the imperative mood: "
    "*\"Add retry backoff to the LLM client\"*, not *\"Added some stuff\"*.\n"
    "2. **Explain the why in the body**, not the how: the diff already shows what changed, but only you "
    "know the reason, the alternatives you rejected and the issue it fixes.\n"
    "3. **Keep one logical change per commit**, so that reviewers can follow along and `git bisect` can "
    "point at the exact change that broke something.\n\n"
    "A good commit message reads like the answer to *\"what will this commit do?\"*",
    hold_after=25,  # "in the imperative mood:", where Alice stops it
)

CAP = Turn(
    "Summarise the CAP theorem in two sentences.",
    "The **CAP theorem** says that a distributed data store can guarantee at most two of *consistency*, "
    "*availability* and *partition tolerance* at the same time.\n\n"
    "Since network partitions will happen sooner or later, the real choice is between staying consistent "
    "and staying available while the network is split.",
    hold_after=24,  # "at the same time.": the picture of the freed slot at work
)

URGENT = Turn(
    "Urgent: the build is red. What should I check first?",
    "Start with what changed since it was green:\n\n"
    "1. **Read the first failure**, not the last one: later errors are often just consequences.\n"
    "2. **Compare with the last green build**:\n"
    "   ```bash\n"
    "   git log --oneline last-green..HEAD\n"
    "   ```\n"
    "3. **Re-run the failing job once** to rule out a flaky test or a network hiccup.\n\n"
    "If it is flaky, quarantine the test and open an issue, so that it gets fixed rather than ignored.",
    token_delay=0.04,
)

BACKOFF = Turn(  # its first attempt gets an HTTP 503 from the LLM server
    "Explain exponential backoff with jitter in a few lines.",
    "**Exponential backoff** waits longer after every failed attempt — 1 s, 2 s, 4 s, 8 s … up to a cap — "
    "so that a struggling server gets room to recover.\n\n"
    "**Jitter** adds a random part to each wait, so that clients that failed together do not all come back "
    "at the same instant:\n\n"
    "```python\n"
    "delay = min(cap, base * 2 ** attempt)\n"
    "time.sleep(random.uniform(delay / 2, delay))\n"
    "```\n\n"
    "That is just what happened to this answer: the first attempt got *HTTP 503 — server busy*, "
    "and the second one, a moment later, went through.",
    hold_after=32,  # "gets room to recover.": the picture of attempt 2 streaming
)

RELEASE_NOTE = Turn(
    "Draft a short release note for version 1.2.",
    "## queuechat 1.2\n\n"
    "- **Live queue positions** for every waiting message, with an estimated start time.\n"
    "- **Stop** now closes the model's stream within a second.\n"
    "- **Retries** with exponential backoff when the LLM server is briefly unavailable.\n"
    "- **中文** user interface.\n\n"
    "Thanks to everyone who reported issues and waited patiently in line!",
    hold_after=17,  # keeps the LLM busy while Alice's message waits in Chinese
)

DASHBOARD_NAME = Turn(
    "Suggest a name for a queue-monitoring dashboard.",
    "How about **Queue View**, **Lineup**, or — my favourite — **Who's Next?**",
)

QUEUE_ZH = Turn(
    "用三句话解释什么是消息队列。",
    "**消息队列**是一种让程序之间异步传递消息的中间件：发送方把消息放进队列后，就可以继续做自己的事。\n\n"
    "接收方按自己的节奏从队列中取出消息处理，即使一时处理不过来，消息也会安全地排队等待。\n\n"
    "这样系统的各个部分可以**解耦**、**削峰填谷**，某个组件出故障时也不会丢失任务。",
)

SUGGESTIONS = (
    Turn("Suggest a question I could ask.", '"How does the queue decide whose message runs next?"'),
    Turn("推荐一个我可以问的问题。", "“队列是怎么决定下一个轮到谁的？”"),
)

FALLBACK = Turn(
    "",
    "This is the **offline demo model**: it knows the answers of the scripted tour only.\n\n"
    "Run the demo against a real model to chat freely:\n\n"
    "```bash\n"
    "ollama serve & ollama pull qwen3\n"
    "uv run main.py demo\n"
    "```",
)

TURNS = (LONG, HAIKU, COMMIT_TIPS, CAP, URGENT, BACKOFF, RELEASE_NOTE, DASHBOARD_NAME, QUEUE_ZH, *SUGGESTIONS)
_BY_PROMPT = {turn.prompt: turn for turn in TURNS}


def turn_for(prompt: str) -> Turn:
    """The scripted turn for a prompt (the fallback for anything typed by hand)."""
    return _BY_PROMPT.get(prompt.strip(), FALLBACK)


# Chinese has no spaces between words: a model streams it a character or two at a time.
_TOKEN = re.compile(r"\s*(?:[\u2e80-\u9fff\uff00-\uffef]{1,2}|[^\s\u2e80-\u9fff\uff00-\uffef]+)|\s+")


def tokens(text: str) -> list[str]:
    """The text as a model would stream it: words with their leading space, CJK one or two characters at a time.

    Joining the tokens gives the text back exactly.
    """
    return _TOKEN.findall(text)
