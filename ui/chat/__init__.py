"""The chat: the thread (a conversation's messages), the message widget over its UI-free model, the composer,
and the inert, incrementally rendered markdown of model output."""
