"""The scripted demo: ``uv run main.py demo [--offline]``.

It starts queuechat (``main.py``, on a private embedded Redis in a temporary folder) against an LLM server —
the real Ollama at OLLAMA_HOST, or with ``--offline`` the fake one from ``tests/fake_ollama.py`` answering
with scripted markdown — and drives a real Chromium through a tour of the features, saving numbered
screenshots and an animation under ``docs/demo/``.

* ``demo/tour.py``: the command line, the running pieces and the ``Tour`` (one method per scene)
* ``demo/script.py``: what the two users ask, and what the offline LLM answers
* ``demo/fake_llm.py``: the offline LLM server (a subprocess)
* ``demo/processes.py``: starting and, whatever happens, stopping subprocesses
* ``demo/images.py``: side-by-side screenshots and the animation
"""
