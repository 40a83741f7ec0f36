"""OCR Markdown -> sanitised HTML: what survives (tables, math, the VLM's tags) and what never does (scripts,
handlers, dangerous URLs), judged by parsing the output, not by trusting the sanitiser's configuration."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import latex2mathml.converter
import pytest

from gnosis_ocr.api.render import ALLOWED_ATTRIBUTES, ALLOWED_TAGS, MATHML_TAGS, MAX_DEPTH, markdown_to_html

SAFE_SCHEMES = ("http://", "https://", "mailto:")
URL_ATTRIBUTES = {"href", "src", "srcset", "action", "formaction", "data", "poster", "background", "xlink:href"}


class Parsed(HTMLParser):
    """The output's elements, attributes and text as a browser's tokenizer sees them."""

    def __init__(self, fragment: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.chunks: list[str] = []
        self.feed(fragment)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.chunks.append(data)

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def named(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


def assert_safe(out: str) -> Parsed:
    """No script, handler, style or non-http(s)/mailto URL anywhere in the markup; only allow-listed tags."""
    lowered = out.lower()
    assert "<script" not in lowered
    markup = "".join(re.findall(r"<[^>]*>", lowered))  # tags only: escaped text may legitimately say "onerror="
    assert not re.search(r"\son\w+\s*=", markup), out
    assert "javascript:" not in markup and "data:" not in markup and "vbscript:" not in markup, out
    parsed = Parsed(out)
    for tag, attrs in parsed.tags:
        assert tag in ALLOWED_TAGS, (tag, out)
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name, out)
            assert name not in {"style", "id", "srcdoc", "xmlns"}, (tag, name, out)
            if name in URL_ATTRIBUTES:
                assert (value or "").lower().startswith(SAFE_SCHEMES), (tag, name, value, out)
    for attrs in parsed.named("a"):
        assert attrs.get("rel") == "noopener noreferrer nofollow"
    return parsed


# --- structure survives -------------------------------------------------------------------------------------


def test_gfm_table_keeps_cells_and_alignment() -> None:
    out = markdown_to_html(
        "| Item | Qty | Price |\n|:-----|:---:|------:|\n| Tea  | 2   | 3.50  |\n| ~~Milk~~ | 1 | 1.20 |"
    )
    parsed = assert_safe(out)
    assert [attrs.get("align") for attrs in parsed.named("th")] == ["left", "center", "right"]
    assert len(parsed.named("td")) == 6
    assert "<s>Milk</s>" in out  # markdown-it-py 4 writes GFM strikethrough as <s>
    assert "style=" not in out


def test_html_table_keeps_colspan_and_rowspan() -> None:
    source = (
        "Before the table.\n\n"
        '<table><tr><th colspan=2>Header</th></tr><tr><td rowspan="2">A</td><td align="right">1</td></tr>'
        '<tr><td style="color:red" onclick="x()">2</td></tr></table>\n\nAfter.'
    )
    parsed = assert_safe(markdown_to_html(source))
    assert parsed.named("th") == [{"colspan": "2"}]
    assert {"rowspan": "2"} in parsed.named("td")
    assert {"align": "right"} in parsed.named("td")
    assert "Header" in parsed.text and "After." in parsed.text


def test_vlm_tags_become_classed_spans() -> None:
    out = markdown_to_html(
        "<watermark>CONFIDENTIAL</watermark>\n\nBody text.\n\n<img>A bar chart of sales by quarter</img>\n\n"
        "☐ unchecked ☑ checked\n\n<page_number>12</page_number> <PAGE_NUMBER class=x/> <Watermark id=w>W</WATERMARK>"
    )
    parsed = assert_safe(out)
    assert '<span class="ocr-watermark">CONFIDENTIAL</span>' in out
    assert '<span class="ocr-page-number">12</span> <span class="ocr-page-number"></span>' in out
    assert '<span class="ocr-watermark">W</span>' in out
    assert '<span class="ocr-image">A bar chart of sales by quarter</span>' in out
    assert "☐ unchecked ☑ checked" in parsed.text
    assert not parsed.named("img")


def test_markdown_image_becomes_its_alt_text() -> None:
    out = markdown_to_html("![A *scanned* logo](https://cdn.example/logo.png) and ![x](data:image/png;base64,AAAA)")
    parsed = assert_safe(out)
    assert '<span class="ocr-image">A scanned logo</span>' in out
    assert not parsed.named("img")
    assert "cdn.example" not in out


def test_tesseract_plain_paragraphs() -> None:
    parsed = assert_safe(markdown_to_html("First line of a paragraph\nsecond line.\n\nAnother paragraph costs $5."))
    assert len(parsed.named("p")) == 2
    assert "costs $5." in parsed.text


def test_links_keep_only_absolute_safe_urls() -> None:
    out = markdown_to_html(
        "[site](https://example.org/a?b=1) [mail](mailto:ops@example.org) [local](/api/v1/jobs/x/result.zip) "
        "[ftp](ftp://example.org/f)"
    )
    parsed = assert_safe(out)
    assert [attrs.get("href") for attrs in parsed.named("a")] == [
        "https://example.org/a?b=1",
        "mailto:ops@example.org",
        None,
        None,
    ]
    assert "local" in parsed.text


# --- math ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "display"),
    [
        ("Energy $E = mc^2$ here.", "inline"),
        ("Energy \\(E = mc^2\\) here.", "inline"),
        ("$$\nE = mc^2\n$$", "block"),
        ("\\[\nE = mc^2\n\\]", "block"),
    ],
)
def test_math_becomes_mathml_with_its_display(source: str, display: str) -> None:
    out = markdown_to_html(source)
    parsed = assert_safe(out)
    assert parsed.named("math") == [{"display": display}]
    assert [tag for tag, _ in parsed.tags if tag == "msup"] == ["msup"]
    assert "$" not in parsed.text and "\\(" not in parsed.text


def test_underscores_and_stars_in_math_are_not_emphasis() -> None:
    out = markdown_to_html("Let $x_i$ and $y_j$ be $a * b * c$, so $$\\sum_{k} w_k x_k$$ holds_for_all.")
    parsed = assert_safe(out)
    assert not parsed.named("em") and not parsed.named("strong")
    assert len(parsed.named("math")) == 4
    assert len([tag for tag, _ in parsed.tags if tag == "msub"]) == 4  # x_i, y_j, w_k, x_k
    assert "holds_for_all" in parsed.text


def test_math_in_html_and_gfm_table_cells() -> None:
    html_table = markdown_to_html("<table><tr><td>$\\alpha_1$</td><td>$|x|$</td></tr></table>")
    assert len(assert_safe(html_table).named("math")) == 2
    gfm = markdown_to_html("| f | value |\n|---|---|\n| $|x|_1$ | $a_b$ |")
    parsed = assert_safe(gfm)
    assert len(parsed.named("math")) == 2 and len(parsed.named("td")) == 2


def test_dollars_that_are_prices_or_code_stay_text() -> None:
    source = "It costs $5 and $10, or $ 3. `echo $HOME_DIR$` and\n\n```sh\nexport A=$B_C$\n```\n\nEscaped \\$x\\$."
    out = markdown_to_html(source)
    parsed = assert_safe(out)
    assert not parsed.named("math")
    assert "It costs $5 and $10, or $ 3." in parsed.text
    assert "echo $HOME_DIR$" in parsed.text and "export A=$B_C$" in parsed.text
    assert "Escaped $x$." in parsed.text


def test_text_inside_math_is_escaped() -> None:
    # latex2mathml's own convert() un-escapes text, so \text{<b>} would turn into a tag there.
    out = markdown_to_html("$\\text{<b>not bold</b> & <i>co</i>}$")
    parsed = assert_safe(out)
    assert not parsed.named("b") and not parsed.named("i")
    assert "<b>not bold</b> & <i>co</i>" in parsed.text.replace("\xa0", " ")  # \text spaces are no-break


@pytest.mark.parametrize(
    "latex",
    [
        "$\\left( x$",
        "$$\\begin{matrix} a & b$$",
        "${$",
        "$x_$",
        "$" + "{" * 2000 + "x" + "}" * 2000 + "$",  # RecursionError inside latex2mathml
    ],
)
def test_unconvertible_latex_is_shown_as_source(latex: str) -> None:
    out = markdown_to_html(f"Before {latex} after")
    parsed = assert_safe(out)
    assert parsed.named("code") == [{"class": "math-error"}]
    assert latex in parsed.text
    assert "Before" in parsed.text and "after" in parsed.text


@pytest.mark.parametrize("latex", ["$\\unicode x$", "$\\unicode{zz}$", "$\\href{javascript:alert(1)}{x}$"])
def test_odd_latex_never_raises(latex: str) -> None:
    assert_safe(markdown_to_html(latex))


def test_latex2mathml_attributes_are_filtered() -> None:
    out = markdown_to_html(
        "$\\style{background:url(https://evil.example/x)}{a}$ $\\class{x}{b}$ $\\color{red}{c}$ $\\rule{1em}{2em}$"
    )
    parsed = assert_safe(out)
    assert "evil.example" not in out and "mathcolor" not in out and "mathbackground" not in out
    assert "class=" not in out
    assert len(parsed.named("math")) == 4


# What the allowlist must cover. Attributes latex2mathml writes that are dropped on purpose: xmlns (implied in
# text/html), href/style/class/mathcolor/mathbackground (from \href, \style, \class, \color, \rule), movablelimits
# on mrow (no effect there).
DROPPED_MATHML_ATTRIBUTES = {"xmlns", "href", "style", "class", "mathcolor", "mathbackground", "movablelimits"}
LATEX_CORPUS = [
    r"\frac{a}{b} + \dfrac{1}{2} + \tfrac{x}{y} + \binom{n}{k} + \sqrt{x} + \sqrt[3]{y}",
    r"\sum_{i=0}^{n} i^2 = \prod_{j} a_j \int_0^\infty e^{-x} dx \oint \lim_{x \to 0} \max_k",
    r"\begin{pmatrix} a & b \\ c & d \end{pmatrix} \begin{bmatrix} 1 \end{bmatrix} \begin{vmatrix} x \end{vmatrix}",
    r"f(x) = \begin{cases} 1 & x > 0 \\ 0 & \text{otherwise} \end{cases}",
    r"\begin{array}{c|l} a & b \\ \hline c & d \end{array} \begin{aligned} a &= b \\ c &= d \end{aligned}",
    r"\overline{AB} \underline{x} \hat{x} \tilde{y} \vec{v} \dot{x} \ddot{x} \bar{z} \widehat{xyz}",
    r"\overbrace{a+b}^{n} \underbrace{c+d}_{m} \overset{!}{=} \underset{x}{\arg\min} \stackrel{def}{=}",
    r"\boxed{E} \cancel{x} \not= \neq \leq \geq \approx \equiv \in \notin \subseteq \cup \cap",
    r"\mathbb{R} \mathcal{L} \mathfrak{g} \mathrm{d}x \mathbf{v} \mathit{it} \mathsf{s} \mathtt{t} \boldsymbol{\beta}",
    r"\left( \frac{a}{b} \right] \left\{ x \middle| y \right\} \big( \Big[ \bigg\{ \Bigg\langle",
    r"x' + y'' \quad a \qquad b \, c \; d \! e \text{ and } \operatorname{sgn}(x) \mod 3 \pmod{5}",
    r"\alpha \beta \Gamma \Delta \partial \nabla \infty \hbar \ell \cdots \ldots \vdots \ddots",
    r"\displaystyle \sum_i \textstyle \sum_j \scriptstyle k \substack{a \\ b} \color{red}{x} \rule{1em}{1pt}",
    r"\xrightarrow{f} \longrightarrow \Rightarrow \mapsto \hookrightarrow \phantom{x} \smash{y} \tag{1}",
]


@pytest.mark.parametrize("latex", LATEX_CORPUS)
def test_allowlist_covers_what_latex2mathml_emits(latex: str) -> None:
    for display in ("inline", "block"):
        root = latex2mathml.converter.convert_to_element(latex, display=display)
        for element in root.iter():
            tag = element.tag.rpartition("}")[2]
            assert tag in MATHML_TAGS, (tag, latex)
            for name in element.attrib:
                assert (
                    name in ALLOWED_ATTRIBUTES.get(tag, ())
                    or name in DROPPED_MATHML_ATTRIBUTES
                    or (tag == "math" and name == "display")
                ), (tag, name, latex)
    out = markdown_to_html(f"$${latex}$$")
    assert "math-error" not in out
    assert_safe(out)


def test_placeholders_cannot_be_forged() -> None:
    parsed = assert_safe(markdown_to_html("text \ue0000\ue001 and $x$"))
    assert len(parsed.named("math")) == 1
    assert "\ufffd0\ufffd" in parsed.text


# --- XSS: every payload neutralised ---------------------------------------------------------------------------

XSS: list[tuple[str, str, str | None]] = [
    # (id, payload, text that should survive or None)
    ("script", "<script>alert(1)</script>kept", "kept"),
    ("script-mixed-case", "<ScRiPt >alert(1)</sCrIpT>kept", "kept"),
    ("img-onerror", "<img src=x onerror=alert(1)>kept", "kept"),
    ("md-javascript-link", "[click](javascript:alert(1))", "click"),
    ("html-javascript-link", '<a href="javascript:alert(1)">click</a>', "click"),
    ("entity-javascript-link", '<a href="jav&#x61;script&colon;alert(1)">click</a>', "click"),
    ("decimal-entity-link", '<a href="&#106;&#97;vascript:alert(1)">click</a>', "click"),
    ("tab-in-scheme", '<a href="java\tscript:alert(1)">click</a>', "click"),
    ("data-link", '<a href="data:text/html,<script>alert(1)</script>">click</a>', "click"),
    ("svg-onload", "<svg onload=alert(1)><circle r=5></circle></svg>kept", "kept"),
    ("svg-xlink", '<svg><a xlink:href="javascript:alert(1)"><text>label</text></a></svg>', None),
    ("iframe", '<iframe src="https://evil.example/"></iframe>kept', "kept"),
    ("style-expression", '<div style="width: expression(alert(1))">kept</div>', "kept"),
    ("style-url", '<p style="background:url(javascript:alert(1))">kept</p>', "kept"),
    ("style-tag", "<style>@import url(https://evil.example/x.css); body{display:none}</style>kept", "kept"),
    ("math-mtext-script", "<math><mtext><script>alert(1)</script></mtext></math>kept", "kept"),
    ("mathml-href", '<math href="javascript:alert(1)"><mi xlink:href="javascript:alert(1)">x</mi></math>', "x"),
    ("mathml-maction", '<math><maction actiontype="statusline"><mi>x</mi><mtext>js</mtext></maction></math>', "x"),
    ("mxss-mglyph", "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>", None),
    ("mxss-annotation-xml", '<math><annotation-xml encoding="text/html"><img src=x onerror=alert(1)>', None),
    ("comment-hiding-script", "<!-- --><script>alert(1)</script><!-- -->kept", "kept"),
    ("script-in-comment", "<!--<script>alert(1)</script>-->kept", "kept"),
    ("noscript-attribute", '<noscript><p title="</noscript><img src=x onerror=alert(1)>">', None),
    ("form", '<form action="https://evil.example/"><input name=q><button formaction=x>Go</button></form>', "Go"),
    ("meta-refresh", '<meta http-equiv="refresh" content="0;url=https://evil.example/">kept', "kept"),
    ("base-href", '<base href="https://evil.example/">kept', "kept"),
    ("object", '<object data="javascript:alert(1)">fallback</object>kept', "kept"),
    ("embed", '<embed src="javascript:alert(1)">kept', "kept"),
    ("link-stylesheet", '<link rel="stylesheet" href="https://evil.example/x.css">kept', "kept"),
    ("handler-on-allowed-tag", '<a href="https://ok.example/" onclick="alert(1)">ok</a>', "ok"),
    ("details-ontoggle", "<details open ontoggle=alert(1)><summary>s</summary>kept</details>", "kept"),
    ("input-autofocus", "<input autofocus onfocus=alert(1)>kept", "kept"),
    ("table-background", '<table background="javascript:alert(1)"><tr><td>cell</td></tr></table>', "cell"),
    ("watermark-handler", "<watermark onmouseover=alert(1)>W</watermark>", "W"),
    ("class-not-allowed", '<span class="ocr-watermark evil" id="x">s</span>', "s"),
    ("latex-text-html", "$\\text{<img src=x onerror=alert(1)>}$", "<img src=x onerror=alert(1)>"),
    ("latex-href", "$\\href{javascript:alert(1)}{x}$", "x"),
    ("template", "<template><script>alert(1)</script></template>kept", "kept"),
    ("vbscript", '<a href="vbscript:msgbox(1)">click</a>', "click"),
]


@pytest.mark.parametrize(("payload", "survives"), [(p, s) for _, p, s in XSS], ids=[i for i, _, _ in XSS])
def test_xss_payload_is_neutralised(payload: str, survives: str | None) -> None:
    for source in (payload, f"Some text before.\n\n{payload}\n\n| a |\n|---|\n| {payload} |"):
        out = markdown_to_html(source)
        parsed = assert_safe(out)
        assert not parsed.named("img") and not parsed.named("svg") and not parsed.named("form")
        if survives is not None:
            assert survives in parsed.text.replace("\xa0", " "), out


def test_span_classes_are_filtered_not_dropped() -> None:
    out = markdown_to_html('<span class="ocr-watermark evil">s</span><div class="ocr-image">d</div>')
    assert '<span class="ocr-watermark">s</span>' in out
    assert "<div>d</div>" in out


# --- size and depth -------------------------------------------------------------------------------------------


def test_deep_nesting_falls_back_to_plain_text() -> None:
    source = "Intro\n\n" + "<div>" * 20_000 + "deep" + "</div>" * 20_000
    out = markdown_to_html(source)  # html5ever would take tens of seconds on this; the guard makes it plain text
    parsed = assert_safe(out)
    assert not parsed.named("div")
    assert "Intro" in parsed.text and "deep" in parsed.text and "<div><div>" in parsed.text


def test_long_flat_table_is_not_mistaken_for_deep_nesting() -> None:
    rows = "".join(f"<tr><td>{i}<td>$x_{{{i}}}$" for i in range(MAX_DEPTH * 2))  # cells left open, as HTML allows
    parsed = assert_safe(markdown_to_html(f"<table>{rows}</table>"))
    assert len(parsed.named("td")) == MAX_DEPTH * 4
    assert len(parsed.named("math")) == MAX_DEPTH * 2


def test_large_page_renders() -> None:
    """A megabyte of Tesseract-like text and VLM tables renders completely; speed is in bench/render_bench.py."""
    page = (
        "Paragraph of a scanned page, with a price of $5 and <watermark>DRAFT</watermark>.\n" * 4
        + '\n<table><tr><td colspan="2">Total</td></tr><tr><td>a</td><td>$\\frac{1}{2}$</td></tr></table>\n\n'
    )
    pages = 1_000_000 // len(page)
    out = markdown_to_html(page * pages)
    assert out.count("<table>") == pages
    assert out.count('<math display="inline">') == pages
    assert out.count('<span class="ocr-watermark">DRAFT</span>') == 4 * pages
    assert "<script" not in out
