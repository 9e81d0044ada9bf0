"""The sections around the chat that ``ui.frame`` composes: header, sidebar, metrics drawer."""
