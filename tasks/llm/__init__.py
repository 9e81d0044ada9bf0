"""LLM clients: one interface (:class:`~tasks.llm.base.Client`), two small implementations — Ollama's native
NDJSON API (:mod:`tasks.llm.ollama`) and any OpenAI-compatible server (:mod:`tasks.llm.openai`) — producing one
stream of events. Nothing above this package knows the protocols."""

from tasks.llm.base import (Chunk, Client, LLMError, Options, PermanentLLMError, TransientLLMError, classify)
from tasks.llm.ollama import OllamaClient
from tasks.llm.openai import OpenAIClient

__all__ = ["Chunk", "Client", "LLMError", "OllamaClient", "OpenAIClient", "Options", "PermanentLLMError",
           "TransientLLMError", "classify"]
