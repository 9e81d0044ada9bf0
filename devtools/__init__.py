"""The dev stack that the tests, the benchmarks and the demo share: everything needed to run queuechat
privately on loopback, watch it, break it and stop it without leaving a process behind.

- ``processes.py``   :class:`Child`: one subprocess that dies with us (``tasks.supervisor.spawn``), its log, its stop
- ``stack.py``       the pieces of a private stack — Redis, :class:`App` (``main.py``), :class:`Workers`
                     (``dramatiq tasks.actors``) — and :class:`Stack`, all of them at once
- ``pools.py``       :class:`WorkerPools`: running worker pools shared between tests, one per settings
- ``worker_guard.py`` imported by each worker process of a non-queuechat actor module so that it dies with its master
- ``fake_llm/``      a scripted LLM server speaking Ollama's and the OpenAI-compatible API; a blackhole address
- ``proxy.py``       a TCP proxy that can be paused (a silent partition) or dropped
- ``browser.py``     the system Chromium through Playwright
- ``page_user.py``   a person at a queuechat page: the moves both tours make (priority, language, drawers)
- ``sse.py``         the app's Server-Sent Events, read with httpx-sse
- ``raw_sse.py``     the same on a bare asyncio socket, for a thousand clients in one process
- ``page_client.py`` one live NiceGUI page without a browser (NiceGUI's socket.io protocol, python-socketio)
- ``sessions.py``    the browser user a session cookie stands for
- ``redis_clients.py`` Redis' connections counted per process (``CLIENT LIST`` and psutil)
- ``figures.py``     process readings through psutil: trees, CPU, memory, connections, marked processes
- ``waiting.py``     :func:`wait_for`: poll a condition with a deadline
"""
