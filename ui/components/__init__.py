"""The sections of the queuechat page, one module each: header, sidebar, chat, metrics."""
