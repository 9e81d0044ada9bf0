"""Benchmarks and the load test of queuechat: ``python -m benchmarks.run`` and ``python -m benchmarks.load``.

Both start everything they need on loopback (a private Redis, the fake LLM, the app and the workers) through
:mod:`benchmarks.harness`, and stop all of it at the end.
"""
