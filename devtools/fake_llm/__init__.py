"""A fake LLM server for tests, benchmarks and the demo: Ollama's API and the OpenAI-compatible one (llama.cpp,
vLLM) on one real socket, answering as scripted.

- ``reply.py``   :class:`Reply` (what to stream, how fast, which fault) and the echo of unscripted prompts
- ``answer.py``  plays a Reply over HTTP: slots, delays, faults, clients that leave
- ``ollama.py``  ``/api/*``: NDJSON chat and generate, tags, ps, version
- ``openai.py``  ``/v1/*``: SSE chat completions, models; llama.cpp's ``/props`` and ``/health``
- ``server.py``  :class:`FakeLLM`: the server in a thread, scripting and what it observed
- ``blackhole.py`` an address where connecting times out
- ``__main__.py`` ``python -m devtools.fake_llm --port N``: the same server in its own process
"""

from devtools.fake_llm.blackhole import Blackhole
from devtools.fake_llm.reply import DEFAULT_MODELS, Reply, prompt_of
from devtools.fake_llm.server import FakeLLM

__all__ = ["DEFAULT_MODELS", "Blackhole", "FakeLLM", "Reply", "prompt_of"]
