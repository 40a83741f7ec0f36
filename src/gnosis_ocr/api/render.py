"""A page's OCR Markdown -> an HTML fragment that is safe to assign to ``innerHTML`` on our own origin.

The pipeline, one small function each:

1. ``_protect`` scans the source once, skipping code (fenced blocks, code spans). It swaps math (``$...$``,
   ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``) for placeholders, so Markdown never sees the ``_`` and ``*`` inside
   it, and turns the VLM's own tags (``<watermark>``, ``<page_number>``, ``<img>description</img>``) into spans
   with allow-listed classes.
2. markdown-it (CommonMark, GFM tables, strikethrough; raw HTML on, because the VLM writes its tables as HTML)
   renders the rest. Table alignment becomes ``align=``; image syntax becomes its alt text.
3. Placeholders become MathML (latex2mathml's tree, serialised here with real escaping: its own ``convert``
   un-escapes text, so ``\\text{<b>}`` would come out as a tag) or ``<code class="math-error">source</code>``.
4. nh3 sanitises the whole fragment with the allowlists below. That is the one security boundary; the steps
   before it only decide what the output looks like.

Speed: markdown-it-py is pure Python (roughly 1 MB/s of plain text, ten times less for GFM pipe tables) and
latex2mathml takes 0.5-1 ms per distinct expression; ``bench/render_bench.py`` prints the numbers. html5ever's
tree builder is quadratic in nesting depth, so a fragment nested deeper than ``MAX_DEPTH`` is rendered as plain
text instead.
"""

from __future__ import annotations

import html
import logging
import re
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from xml.etree.ElementTree import Element

import latex2mathml.converter
import nh3
from markdown_it import MarkdownIt
from markdown_it.token import Token

logger = logging.getLogger(__name__)

__all__ = ["ALLOWED_ATTRIBUTES", "ALLOWED_CLASSES", "ALLOWED_TAGS", "MAX_DEPTH", "markdown_to_html"]

MAX_DEPTH = 512  # open elements; real pages stay under 50, html5ever slows quadratically past a few thousand

TEXT_TAGS = frozenset(
    {
        *(f"h{level}" for level in range(1, 7)),
        *("p", "br", "hr", "div", "span", "blockquote", "pre", "code", "ul", "ol", "li", "a"),
        *("strong", "em", "b", "i", "u", "s", "del", "sub", "sup"),
    }
)
TABLE_TAGS = frozenset({"table", "caption", "thead", "tbody", "tfoot", "tr", "th", "td"})
# What latex2mathml emits, plus the structural MathML it could (semantics/annotation). Never annotation-xml,
# mglyph or malignmark: those are the HTML-integration and parser-confusion points of mutation-XSS payloads.
MATHML_TAGS = frozenset(
    {
        *("math", "semantics", "annotation", "mrow", "mi", "mn", "mo", "ms", "mtext", "mspace"),
        *("msup", "msub", "msubsup", "mfrac", "msqrt", "mroot", "munder", "mover", "munderover"),
        *("mtable", "mtr", "mtd", "mstyle", "menclose", "mpadded", "mphantom"),
    }
)
ALLOWED_TAGS = TEXT_TAGS | TABLE_TAGS | MATHML_TAGS

_CELL = frozenset({"colspan", "rowspan", "align"})
_MO = frozenset(
    {
        *("accent", "fence", "form", "largeop", "lspace", "rspace", "maxsize", "minsize", "movablelimits"),
        *("separator", "stretchy", "symmetric", "mathvariant"),
    }
)
_SIZE = frozenset({"width", "height", "depth"})
# Presentation attributes only. No href/xlink:href (MathML links), style, class, id, mathcolor/mathbackground
# (latex2mathml writes \style, \class, \href and \color into them verbatim), and no xmlns: in text/html the
# parser puts <math> in the MathML namespace by its name.
ALLOWED_ATTRIBUTES: dict[str, frozenset[str]] = {
    "a": frozenset({"href", "title"}),
    "ol": frozenset({"start"}),
    "th": _CELL,
    "td": _CELL,
    "mo": _MO,
    **dict.fromkeys(("mi", "mn", "ms", "mtext"), frozenset({"mathvariant"})),
    "mstyle": frozenset({"displaystyle", "scriptlevel", "mathsize", "mathvariant"}),
    "mfrac": frozenset({"linethickness"}),
    "mover": frozenset({"accent"}),
    "munder": frozenset({"accentunder"}),
    "munderover": frozenset({"accent", "accentunder"}),
    "mspace": _SIZE | {"linebreak"},
    "mpadded": _SIZE | {"lspace", "voffset"},
    "menclose": frozenset({"notation"}),
    "mtable": frozenset(
        {*("columnalign", "columnlines", "columnspacing", "displaystyle"), *("rowalign", "rowlines", "rowspacing")}
    ),
    "mtr": frozenset({"columnalign", "rowalign"}),
    "mtd": frozenset({"columnalign", "rowalign", "columnspan", "rowspan"}),
    "annotation": frozenset({"encoding"}),
}
ALLOWED_CLASSES: dict[str, frozenset[str]] = {
    "span": frozenset({"ocr-watermark", "ocr-page-number", "ocr-image"}),
    "code": frozenset({"math-error"}),
}
# Dropped with their content. Any other element not allowed loses its tag and keeps its text.
_DROP_WITH_CONTENT = frozenset(
    {
        *("script", "style", "template", "noscript", "noembed", "noframes", "xmp", "title", "textarea"),
        *("iframe", "object"),
    }
)

_CLEANER = nh3.Cleaner(
    tags=set(ALLOWED_TAGS),
    clean_content_tags=set(_DROP_WITH_CONTENT),
    attributes={tag: set(names) for tag, names in ALLOWED_ATTRIBUTES.items()},
    tag_attribute_values={"math": {"display": {"block", "inline"}}},
    allowed_classes={tag: set(names) for tag, names in ALLOWED_CLASSES.items()},
    url_schemes={"http", "https", "mailto"},
    url_relative="deny",  # a relative link would point into this API, on the origin that holds the key
    link_rel="noopener noreferrer nofollow",
    strip_comments=True,
)


def markdown_to_html(markdown: str) -> str:
    """``markdown`` (one page of OCR output) as a sanitised HTML fragment. Never raises on odd input: LaTeX that
    does not convert is shown as its source in ``<code class="math-error">``."""
    text = _normalise(markdown)
    protected, maths = _protect(text)
    rendered = _render_markdown(protected)
    mathml = _convert_all(maths)
    fragment = _PLACEHOLDER.sub(lambda m: mathml[int(m.group(1))], rendered)  # only _protect made placeholders
    depth = _max_depth(fragment)
    if depth > MAX_DEPTH:
        logger.warning("rendering %d characters of Markdown as plain text: nested %d elements deep", len(text), depth)
        fragment = _plain_paragraphs(text)
    return str(_CLEANER.clean(fragment))


# 1. Source scan: placeholders for math, spans for the VLM's tags, code left alone.

_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use characters; removed from the input first, so never forged
_PLACEHOLDER = re.compile(f"{_OPEN}([0-9]+){_CLOSE}")

# Every token starts with one of these characters; the lookahead lets the regex engine skip the rest quickly.
# Fences are found by the newline before them, so the scan runs over "\n" + text.
_TOKEN = re.compile(
    r"(?=[\n\\$`<])(?:"
    r"(?P<fence>\n[ \t]{0,3}(?:`{3,}|~{3,}))"
    r"|(?P<escape>\\[\\`$])"
    r"|(?P<math>\$\$|\$|\\\(|\\\[)"
    r"|(?P<ticks>`+)"
    r"|(?P<tag></?(?P<name>(?i:watermark|page_number))\b[^<>]*>)"
    r"|(?P<img_open><(?i:img)>)(?=[^<]*</(?i:img)>)"
    r"|(?P<img_close></(?i:img)>))"
)
_BLANK_LINE = re.compile(r"\n[ \t]*(?=\n)")
_TICK_RUN = re.compile(r"`+")
# A closing single $ has no space (or backslash) before it and no digit after it: "$5 and $10" is not math.
_DOLLAR_CLOSE = re.compile(r"(?<![\s\\$])\$(?![\d$])")
_CLOSERS = {"$$": re.compile(r"(?<!\\)\$\$"), "\\(": re.compile(r"\\\)"), "\\[": re.compile(r"\\\]")}
_SPAN_CLASS = {"watermark": "ocr-watermark", "page_number": "ocr-page-number"}


@dataclass(frozen=True)
class _Math:
    latex: str
    display: bool
    source: str  # with its delimiters, shown as is when it does not convert


class _Positions:
    """Where closers and paragraph ends are, found once per document so each lookup is a bisect."""

    def __init__(self, text: str) -> None:
        self.end = len(text)
        self.blank = [m.start() for m in _BLANK_LINE.finditer(text)]
        self.dollar = [m.start() for m in _DOLLAR_CLOSE.finditer(text)]
        self.closers = {delim: [m.start() for m in rx.finditer(text)] for delim, rx in _CLOSERS.items()}
        self.ticks: dict[int, list[int]] = {}
        for run in _TICK_RUN.finditer(text):
            self.ticks.setdefault(run.end() - run.start(), []).append(run.start())

    def paragraph_end(self, pos: int) -> int:
        i = bisect_left(self.blank, pos)
        return self.blank[i] if i < len(self.blank) else self.end

    def next(self, positions: Sequence[int], start: int) -> int | None:
        """The first position at or after ``start`` in the same paragraph."""
        i = bisect_left(positions, start)
        return positions[i] if i < len(positions) and positions[i] < self.paragraph_end(start) else None


def _normalise(markdown: str) -> str:
    text = markdown.replace("\r\n", "\n").replace("\r", "\n")
    if _OPEN in text or _CLOSE in text:
        text = text.replace(_OPEN, "\ufffd").replace(_CLOSE, "\ufffd")
    return text


def _protect(text: str) -> tuple[str, list[_Math]]:
    """``text`` with math swapped for placeholders and the VLM's tags for spans, and the math found."""
    text = "\n" + text
    where = _Positions(text)
    out: list[str] = []
    maths: list[_Math] = []
    done = pos = 1  # text[:done] is in out (the added newline is not); the scan goes on from pos
    while (m := _TOKEN.search(text, pos)) is not None:
        kind = m.lastgroup
        pos = m.end()
        if kind == "fence":
            pos = _fence_end(text, m, where)
        elif kind == "ticks":
            run = len(m.group())
            close = where.next(where.ticks.get(run, ()), m.end())
            if close is not None:
                pos = close + run
        elif kind == "math":
            found = _math_at(text, m, where)
            if found is not None:
                math, pos = found
                out += [text[done : m.start()], f"{_OPEN}{len(maths)}{_CLOSE}"]
                maths.append(math)
                done = pos
        elif kind in {"tag", "img_open", "img_close"}:
            out += [text[done : m.start()], _span_for(m, kind)]
            done = pos
    out.append(text[done:])
    return "".join(out), maths


def _fence_end(text: str, m: re.Match[str], where: _Positions) -> int:
    """Where the fenced code block opened by ``m`` ends (the end of the text when it is never closed)."""
    marker = m.group().lstrip("\n \t")
    eol = text.find("\n", m.end())
    eol = where.end if eol < 0 else eol
    if marker[0] == "`" and "`" in text[m.end() : eol]:  # ```a``` on one line is a code span, not a fence
        close = where.next(where.ticks.get(len(marker), ()), m.end())
        return m.end() if close is None else close + len(marker)
    closing = re.compile(rf"^[ \t]{{0,3}}{re.escape(marker[0])}{{{len(marker)},}}[ \t]*$", re.MULTILINE)
    found = closing.search(text, eol + 1) if eol < where.end else None
    return where.end if found is None else found.end()


def _math_at(text: str, m: re.Match[str], where: _Positions) -> tuple[_Math, int] | None:
    """The math opened by ``m`` and where it ends, or None when ``m`` opens nothing (a price, a lone $)."""
    delim, start = m.group(), m.end()
    if delim == "$":
        if start >= where.end or text[start].isspace():
            return None
        close = where.next(where.dollar, start)
        width = 1
    else:
        close = where.next(where.closers[delim], start)
        width = 2
    if close is None or not text[start:close].strip() or "`" in text[start:close]:
        return None  # a backtick means the "closer" is in a code span: `$HOME` after "$5 ..." is not math
    return _Math(text[start:close], delim in {"$$", "\\["}, text[m.start() : close + width]), close + width


def _span_for(m: re.Match[str], kind: str | None) -> str:
    """The span that stands for the VLM tag ``m`` (its attributes dropped)."""
    tag = m.group()
    if kind == "img_open":
        return '<span class="ocr-image">'
    if tag.startswith("</"):
        return "</span>"
    span = f'<span class="{_SPAN_CLASS[m.group("name").lower()]}">'
    return span + "</span>" if tag.endswith("/>") else span


# 2. Markdown.


def _render_markdown(text: str) -> str:
    md = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    env: dict[str, object] = {}
    tokens = md.parse(text, env)
    _adjust(tokens)
    return str(md.renderer.render(tokens, md.options, env))


_TEXT_ALIGN = re.compile(r"text-align:(left|center|right)")


def _adjust(tokens: list[Token]) -> None:
    """Cell alignment as ``align=`` (styles do not pass the sanitiser); images as their alt text."""
    for token in tokens:
        if token.type in {"th_open", "td_open"}:
            align = _TEXT_ALIGN.fullmatch(str(token.attrs.get("style", "")))
            token.attrs = {"align": align.group(1)} if align else {}
        if token.children:
            token.children = [_image_as_text(child) for child in token.children]


def _inline_text(tokens: Sequence[Token]) -> str:
    """What an image's alt text reads as: the text of its inline tokens, markup dropped."""
    parts = []
    for token in tokens:
        if token.type in {"text", "code_inline"}:
            parts.append(token.content)
        elif token.type in {"softbreak", "hardbreak"}:
            parts.append(" ")
        elif token.type == "image":
            parts.append(_inline_text(token.children or []))
    return "".join(parts)


def _image_as_text(token: Token) -> Token:
    if token.type != "image":
        return token
    alt = _inline_text(token.children or [])
    return Token("html_inline", "", 0, content=f'<span class="ocr-image">{html.escape(alt, quote=False)}</span>')


# 3. Math.


def _convert_all(maths: Sequence[_Math]) -> list[str]:
    done: dict[tuple[str, bool], str] = {}  # a page repeats its symbols; each converts once
    out = []
    for math in maths:
        key = (math.latex, math.display)
        if key not in done:
            done[key] = _to_mathml(math)
        out.append(done[key])
    return out


def _to_mathml(math: _Math) -> str:
    try:
        root = latex2mathml.converter.convert_to_element(math.latex, display="block" if math.display else "inline")
    except Exception as exc:  # any parser failure, RecursionError included, shows the source instead
        logger.debug("LaTeX shown as source (%s: %s): %.80r", type(exc).__name__, exc, math.source)
        return f'<code class="math-error">{html.escape(math.source)}</code>'
    return _serialise(root)


_CHAR_REF = re.compile(r"&#(?:[xX]([0-9a-fA-F]{1,6})|([0-9]{1,7}));")


def _unref(text: str) -> str:
    """latex2mathml writes symbols as character references inside text; everything else in it is literal."""

    def char(m: re.Match[str]) -> str:
        code = int(m.group(1), 16) if m.group(1) else int(m.group(2))
        return chr(code) if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else "\ufffd"

    return _CHAR_REF.sub(char, text) if "&#" in text else text


def _serialise(root: Element) -> str:
    """The tree as HTML, text and attribute values escaped (iterative: trees can be deep)."""
    parts: list[str] = []
    work: list[Element | str] = [root]
    while work:
        item = work.pop()
        if isinstance(item, str):
            parts.append(item)
            continue
        tag = item.tag.rpartition("}")[2]
        attrs = "".join(
            f' {name}="{html.escape(_unref(value))}"' for name, value in item.attrib.items() if name != "xmlns"
        )
        parts.append(f"<{tag}{attrs}>")
        if item.text:
            parts.append(html.escape(_unref(item.text), quote=False))
        work.append(f"</{tag}>" + (html.escape(_unref(item.tail), quote=False) if item.tail else ""))
        work.extend(reversed(item))
    return "".join(parts)


# 4. Depth guard.

_VOID = ("area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr")
# Elements a parser closes when the next one of their kind opens: repeating them does not nest.
_SIBLINGS = ("p", "li", "dt", "dd", "td", "th", "tr", "thead", "tbody", "tfoot", "caption", "colgroup", "option")
_NESTING_TAG = re.compile(rf"<(/?)(?!(?:{'|'.join(_VOID + _SIBLINGS)})[\s/>])[a-zA-Z]", re.IGNORECASE)


def _max_depth(fragment: str) -> int:
    """An upper bound on how deep ``fragment``'s elements nest (exact for well-formed markup)."""
    if fragment.count("<") <= MAX_DEPTH:
        return 0
    # The depth after each tag, floored at zero as a parser would (a stray end tag closes nothing), is the
    # running sum minus its lowest point so far. accumulate() keeps the loop in C: pages carry 10^5 tags.
    steps = [-1 if slash else 1 for slash in _NESTING_TAG.findall(fragment)]
    sums = list(accumulate(steps, initial=0))
    return max(depth - lowest for depth, lowest in zip(sums, accumulate(sums, min), strict=True))


def _plain_paragraphs(text: str) -> str:
    """The fallback: every paragraph escaped, its lines kept."""
    paragraphs = (html.escape(p.strip("\n"), quote=False) for p in _BLANK_LINE.split(text) if p.strip())
    return "".join("<p>" + "<br>".join(p.split("\n")) + "</p>" for p in paragraphs)
