"""Everything about jobs: settings, broker, admission, actors, LLM client, job store and metrics.

Never imports ``ui`` or NiceGUI: workers run this package alone (``dramatiq tasks.actors``).
"""
