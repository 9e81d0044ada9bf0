"""Model output as markdown: rendered inert, and while it streams, only its growing end re-rendered.

Two things this module guarantees:

* **Model output can't restyle the page.** ``render`` runs markdown2 with raw HTML escaped (so ``<style>`` in an
  answer reads as text, in code and out of it), then passes the result through an allow-list of the tags
  markdown2 itself writes: anything else — a ``<style>``, a ``style=``, a form, an iframe — comes out as text,
  whatever markdown2's escaping missed; links keep only http(s)/mailto targets; images become links (an answer
  never makes the browser fetch anything). The browser sanitizes once more (``ui.html(sanitize=True)``).
* **A streaming answer costs the browser little.** ``split`` cuts the text into finished blocks (closed at a
  blank line, outside code fences, where no list or quote can continue) and the growing rest;
  :class:`StreamingMarkdown` renders each finished block once, as its own element, and re-renders only the rest.
  Blocks are cut only where markdown2 would start a new block anyway, so the pieces render to the same HTML as
  the whole; at the end the widget checks that and renders the whole text instead if they differ.
"""

from __future__ import annotations

import html
import re
from functools import lru_cache
from html.parser import HTMLParser

import markdown2
from nicegui import ui

EXTRAS = ['fenced-code-blocks', 'tables']

# --- rendering -----------------------------------------------------------------------------------------------


@lru_cache(maxsize=2000)
def render(markdown: str) -> str:
    """Safe HTML of ``markdown`` (model output): markdown2 with raw HTML escaped, then the allow-list."""
    return _Clean.html(markdown2.markdown(markdown, extras=EXTRAS, safe_mode='escape'))


class _Clean(HTMLParser):
    """Re-writes markdown2's HTML keeping only the tags and attributes markdown2 writes; the rest becomes text."""

    PLAIN = {'p', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'ul', 'ol', 'li', 'blockquote', 'pre', 'em', 'strong',
             'hr', 'br', 'table', 'thead', 'tbody', 'tr', 'del', 'sup', 'sub'}
    CLASSED = {'div', 'span', 'code'}     # pygments' highlighting: class names only
    VOID = {'hr', 'br'}
    CLASS = re.compile(r'^[\w -]*$')
    ALIGN = re.compile(r'^text-align:\s*(left|right|center);?$')
    HREF = re.compile(r'^(https?:|mailto:|#|/(?!/))', re.IGNORECASE)

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []

    @classmethod
    def html(cls, markup: str) -> str:
        parser = cls()
        parser.feed(markup)
        parser.close()
        return ''.join(parser.out)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        kept = self._attributes(tag, dict(attrs))
        if kept is None:
            self.out.append(html.escape(self.get_starttag_text() or ''))
        elif tag == 'img':  # an image is shown as a link to it: nothing is fetched
            self.out.append(f'<a href="{html.escape(kept["href"])}">{html.escape(kept["alt"])}</a>')
        else:
            self.out.append(f'<{tag}' + ''.join(f' {name}="{html.escape(value)}"' for name, value in kept.items())
                            + ('/>' if tag in self.VOID else '>'))

    def set_cdata_mode(self, *args, **kwargs) -> None:
        """A ``<style>`` or ``<script>`` is text like any other tag we don't keep, and so is what follows."""

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID or tag == 'img':
            return
        self.out.append(f'</{tag}>' if tag in self.PLAIN | self.CLASSED | {'a', 'th', 'td'} else
                        html.escape(f'</{tag}>'))

    def handle_data(self, data: str) -> None:
        self.out.append(html.escape(data, quote=False))

    def _attributes(self, tag: str, attrs: dict[str, str | None]) -> dict[str, str] | None:
        """The attributes to keep, or None when the tag is not one markdown2 writes (shown as text then)."""
        if tag in self.PLAIN:
            return {}
        if tag in self.CLASSED:
            css = attrs.get('class') or ''
            return {'class': css} if css and self.CLASS.match(css) else {}
        if tag in ('th', 'td'):
            style = attrs.get('style') or ''
            return {'style': style} if self.ALIGN.match(style) else {}
        if tag == 'a':
            href = attrs.get('href') or ''
            kept = {'href': href} if self.HREF.match(href) else {}
            if attrs.get('title'):
                kept['title'] = attrs['title'] or ''
            return kept
        if tag == 'img':
            src = attrs.get('src') or ''
            return {'href': src if self.HREF.match(src) else '#', 'alt': attrs.get('alt') or src}
        return None


# --- streaming: finished blocks and the growing rest -----------------------------------------------------------

LIST_ITEM = re.compile(r'^(?:[*+-]|\d+[.)])[ \t]')
REFERENCE = re.compile(r'^[ ]{0,3}\[[^\]\n]+\]:', re.MULTILINE)   # [id]: url — links anywhere may use it
FENCE_OPENER = re.compile(r'^[ \t]*```', re.MULTILINE)
FENCED = markdown2.FencedCodeBlocks.fenced_code_block_re            # markdown2's own notion of a fenced block


def split(markdown: str) -> tuple[list[str], str]:
    """``(finished blocks, growing rest)`` of a streaming text; ``''.join`` of both is the text.

    A block is finished at a blank line followed by a complete line that starts at the margin, outside any
    fenced code (as markdown2 finds them) and before any fence still open, unless a list or a quote could
    continue there. Texts with link reference definitions are not cut (a link anywhere may refer to one).
    """
    if REFERENCE.search(markdown):
        return [], markdown
    blocked = _fenced_until(markdown)
    blocks, start, position, kind, blank = [], 0, 0, _kind(markdown), False
    lines = markdown.split('\n')
    for line in lines[:-1]:  # the last line may still be growing
        at, position = position, position + len(line) + 1
        if at >= blocked or not _outside_fences(markdown, at):
            blank = False
            continue
        if blank and line[:1] not in ('', ' ', '\t'):
            line_kind = _kind(line)
            if not (line_kind == kind and kind in ('list', 'quote')):
                blocks.append(markdown[start:at])
                start, kind = at, line_kind
        blank = not line.strip()
    return blocks, markdown[start:]


def _kind(line: str) -> str:
    if LIST_ITEM.match(line):
        return 'list'
    return 'quote' if line.startswith('>') else 'other'


def _fenced_until(markdown: str) -> int:
    """Where the first fence that markdown2 would not close starts (the text's length if none)."""
    regions = _regions(markdown)
    for opener in FENCE_OPENER.finditer(markdown):
        if not any(begin <= opener.start() < end for begin, end in regions):
            return opener.start()
    return len(markdown)


def _outside_fences(markdown: str, at: int) -> bool:
    return not any(begin < at < end for begin, end in _regions(markdown))


@lru_cache(maxsize=64)
def _regions(markdown: str) -> tuple[tuple[int, int], ...]:
    return tuple((match.start(1), match.end()) for match in FENCED.finditer(markdown + '\n'))


def close_open_fence(markdown: str) -> str:
    """Markdown of an answer still streaming: a code fence that is open gets closed (the partial code renders
    as code, not as text) and a fence marker cut in half at the very end is held back."""
    head, _, last = markdown.rpartition('\n')
    if last.strip() in ('`', '``'):
        markdown = head
    fences = sum(1 for line in markdown.splitlines() if line.lstrip().startswith('```'))
    return markdown + '\n```' if fences % 2 else markdown


class StreamingMarkdown(ui.element):
    """Markdown that grows: each finished block is rendered once, as its own element; only the rest re-renders.

    ``show(text, final=False)`` may be called as often as the text grows (the caller throttles); a text that is
    not a continuation of the last one (a retry starts the answer afresh), whose cuts moved, or that changes
    after the final one, is rendered anew.
    """

    def __init__(self) -> None:
        super().__init__('div')
        self.classes('qc-answer')
        self.text = ''
        self.blocks: list[str] = []
        self.final = False
        with self:
            self.rest = self._block('')

    def show(self, text: str, final: bool = False) -> None:
        if text == self.text and final == self.final:
            return
        if self.final or not text.startswith(''.join(self.blocks)):
            self._restart()
        if final:
            self._finish(text)
            return
        blocks, rest = split(text)
        if blocks[:len(self.blocks)] != self.blocks:  # a reference definition came: the text is one block now
            self._restart()
        for block in blocks[len(self.blocks):]:
            self._block(block).move(self, target_index=len(self.blocks))
            self.blocks.append(block)
        self.rest.set_content(render(close_open_fence(rest)))
        self.text, self.final = text, False

    def _finish(self, text: str) -> None:
        """The final text: the rest becomes the last block; if the pieces would not render as the whole does
        (a construct the cuts did not foresee), the whole text is rendered as one block instead."""
        blocks, rest = (self.blocks, text[len(''.join(self.blocks)):]) if self.blocks else ([], text)
        pieces = [*blocks, rest] if rest.strip() else blocks
        if _same(pieces, text):
            self.rest.set_content(render(rest))
            if not rest.strip():
                self.rest.delete()
        else:
            self._restart()
            self.rest.set_content(render(text))
        self.text, self.final = text, True

    def _restart(self) -> None:
        self.clear()
        self.blocks = []
        with self:
            self.rest = self._block('')

    def _block(self, markdown: str) -> ui.html:
        with self:
            return ui.html(render(markdown) if markdown else '', sanitize=True).classes('qc-md')


def _same(pieces: list[str], whole: str) -> bool:
    return _squeeze(''.join(render(piece) for piece in pieces)) == _squeeze(render(whole))


def _squeeze(markup: str) -> str:
    return re.sub(r'>\s+<', '><', markup.strip())
