"""Benchmarks and the load test of queuechat: ``python -m benchmarks.run`` and ``python -m benchmarks.load``; and
``python -m benchmarks.real_model``, a tour in front of a real small model (llama-cpp-python, its own uv environment).

Both start everything they need on loopback (a private Redis, the fake LLM, the app and the workers) through
:mod:`benchmarks.harness`, and stop all of it at the end.
"""
