"""Model profiles: how each OCR model is asked to read a page and how its answer becomes Markdown.

A profile is keyed by model id. It holds the prompt (and whether it comes before or after the page image), the page
image budget, the token bound, and ``parse``, which turns the model's raw output into Markdown plus page metadata.
Every shipped model shares the Qwen2.5-VL architecture, so the same engines (transformers, vLLM) serve them all and
only the profile differs. A model id without a profile gets the generic Qwen2.5-VL profile, and a log line says so.

Where each profile's facts come from (prompts are model interface facts, used verbatim):

- ``nanonets-ocr-s``, ``nanonets-ocr2-3b``: the prompt of each model card's usage example (the same text for both:
  image first, then the prompt, with the default system turn); max tokens 4096 (OCR-s card) and 15000 (OCR2 card).
- ``olmocr-2``: olmOCR's ``build_no_anchoring_v4_yaml_prompt`` and ``build_page_query`` (allenai/olmocr,
  ``olmocr/prompts/prompts.py``, ``olmocr/pipeline.py``): the prompt *before* the image, pages rendered with the
  longest side 1288 px, at most 8000 new tokens. The model answers with a YAML front matter (primary_language,
  is_rotation_valid, rotation_correction, is_table, is_diagram) and then the page as Markdown.

A looping profile for tests and benchmarks is ``dataclasses.replace(profile, ignore_eos=True, max_tokens=N)``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_PAD = "<|image_pad|>"
DEFAULT_SYSTEM = "You are a helpful assistant."


@dataclass(frozen=True)
class ParsedPage:
    """A model's answer for one page, as Markdown plus what it said about the page."""

    markdown: str
    meta: Mapping[str, object] = field(default_factory=dict)
    # Degrees the page image must turn to read upright, when the model says it is turned (0: upright). The turn is
    # counter-clockwise, as PIL's ``image.rotate(rotate, expand=True)`` does it: olmOCR's own pipeline applies its
    # ``rotation_correction`` that way (``Image.Transpose.ROTATE_<n>``), though its schema text says "clockwise".
    # ``upright(image, rotate)`` applies it.
    rotate: int = 0


def _plain(raw: str) -> ParsedPage:
    return ParsedPage(raw.strip())


@dataclass(frozen=True)
class ModelProfile:
    name: str  # e.g. "nanonets-ocr-s"
    models: tuple[str, ...]  # model repository ids this profile is for
    prompt: str  # the user's text beside the page image
    max_tokens: int  # default bound on generated tokens per page
    max_pixels: int  # page images are scaled down to at most this many pixels before the model sees them
    licence: str
    parameters: str  # e.g. "3.8B"
    size_bytes: int  # about what the weights take in the cache (0: unknown)
    system: str | None = DEFAULT_SYSTEM
    ignore_eos: bool = False  # never stop before max_tokens (benchmarks and loop tests only)
    parse: Callable[[str], ParsedPage] = _plain
    image_first: bool = True  # the image, then the prompt (Nanonets); False: the prompt, then the image (olmOCR)
    max_side: int | None = None  # also scale down so the longest side is at most this (olmOCR: 1288)
    source: str = ""  # where the prompt and limits come from

    def chat_text(self) -> str:
        """One user turn holding one image and the prompt, in the Qwen2-VL chat format, ready for generation.

        The single ``<|image_pad|>`` stands for the whole image: the engine repeats it once per merged patch."""
        system = f"<|im_start|>system\n{self.system}<|im_end|>\n" if self.system else ""
        image = f"<|vision_start|>{IMAGE_PAD}<|vision_end|>"
        content = image + self.prompt if self.image_first else self.prompt + image
        return f"{system}<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"

    def scaled_size(self, width: int, height: int, max_pixels: int | None = None) -> tuple[int, int]:
        """The size a ``width`` x ``height`` page is scaled down to (never up): at most ``max_pixels`` (default:
        the profile's) and at most ``max_side`` on its longest side, aspect ratio kept."""
        budget = max_pixels or self.max_pixels
        scale = min(1.0, math.sqrt(budget / max(1, width * height)))
        if self.max_side:
            scale = min(scale, self.max_side / max(1, width, height))
        if scale >= 1.0:
            return width, height
        return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))

    def fit(self, image: Image.Image, max_pixels: int | None = None) -> Image.Image:
        """``image`` scaled down to ``scaled_size`` (the same object when it fits already)."""
        size = self.scaled_size(image.width, image.height, max_pixels)
        if size == image.size:
            return image
        return image.resize(size, Image.Resampling.LANCZOS)


def upright(image: Image.Image, rotate: int) -> Image.Image:
    """``image`` turned by ``ParsedPage.rotate`` degrees (counter-clockwise; 0, 90, 180 or 270)."""
    turns = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
    turn = turns.get(rotate % 360)
    return image.transpose(turn) if turn is not None else image


# --- Nanonets ---------------------------------------------------------------------------------------------------

# The prompt published with Nanonets-OCR-s and Nanonets-OCR2-3B (their model cards): tables as HTML, equations as
# LaTeX, tagged images, watermarks and page numbers, check boxes as ☐/☑.
NANONETS_PROMPT = (
    "Extract the text from the above document as if you were reading it naturally. Return the tables in html "
    "format. Return the equations in LaTeX representation. If there is an image in the document and image caption "
    "is not present, add a small description of the image inside the <img></img> tag; otherwise, add the image "
    "caption inside <img></img>. Watermarks should be wrapped in brackets. Ex: <watermark>OFFICIAL "
    "COPY</watermark>. Page numbers should be wrapped in brackets. Ex: <page_number>14</page_number> or "
    "<page_number>9/22</page_number>. Prefer using ☐ and ☑ for check boxes."
)

_PAGE_NUMBER = re.compile(r"<page_number>\s*([^<>\n]{1,20}?)\s*</page_number>")


def parse_nanonets(raw: str) -> ParsedPage:
    """The Markdown as the model wrote it (stripped; its tags kept, the UI renders them). The page number the
    model printed (``<page_number>9/22</page_number>``) goes into meta ``page_number`` as text; where it tagged
    several, the last one (footers carry page numbers more often than headers)."""
    text = raw.strip()
    numbers = _PAGE_NUMBER.findall(text)
    return ParsedPage(text, {"page_number": numbers[-1]} if numbers else {})


NANONETS_OCR_S = ModelProfile(
    name="nanonets-ocr-s",
    models=("nanonets/Nanonets-OCR-s",),
    prompt=NANONETS_PROMPT,
    max_tokens=4096,
    max_pixels=2_400_000,
    licence="not stated on the card; base Qwen2.5-VL-3B: Qwen Research, non-commercial",
    parameters="3.75B",
    size_bytes=7_510_000_000,
    parse=parse_nanonets,
    source="huggingface.co/nanonets/Nanonets-OCR-s (model card usage example)",
)

NANONETS_OCR2_3B = ModelProfile(
    name="nanonets-ocr2-3b",
    models=("nanonets/Nanonets-OCR2-3B",),
    prompt=NANONETS_PROMPT,
    max_tokens=15_000,
    max_pixels=2_400_000,
    licence="not stated on the card; base Qwen2.5-VL-3B: Qwen Research, non-commercial",
    parameters="3.75B",
    size_bytes=7_510_000_000,
    parse=parse_nanonets,
    source="huggingface.co/nanonets/Nanonets-OCR2-3B (model card usage example, max_new_tokens=15000)",
)

# --- olmOCR-2 ---------------------------------------------------------------------------------------------------

# olmOCR's "v4 yaml" prompt without anchor text (build_no_anchoring_v4_yaml_prompt), the one olmOCR-2 reads with.
OLMOCR_PROMPT = (
    "Attached is one page of a document that you must process. Just return the plain text representation of this "
    "document as if you were reading it naturally. Convert equations to LateX and tables to HTML.\n"
    "If there are any figures or charts, label them with the following markdown syntax "
    "![Alt text describing the contents of the figure](page_startx_starty_width_height.png)\n"
    "Return your output as markdown, with a front matter section on top specifying values for the "
    "primary_language, is_rotation_valid, rotation_correction, is_table, and is_diagram parameters."
)

_FRONT_MATTER_KEYS = ("primary_language", "is_rotation_valid", "rotation_correction", "is_table", "is_diagram")
_KEY_LINE = re.compile(r"^\s*([A-Za-z_]+)\s*:\s*(.*?)\s*$")
_FENCE = "---"
_MAX_FRONT_MATTER_LINES = 12  # five keys; more lines before a closing fence means it is not front matter


def _flag(value: str) -> bool | None:
    lowered = value.strip().strip("'\"").lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    return None


def _front_matter_fields(lines: list[str]) -> tuple[dict[str, object], bool]:
    """The known keys of front matter ``lines``, and whether every line read cleanly."""
    meta: dict[str, object] = {}
    clean = True
    for line in lines:
        if not line.strip():
            continue
        match = _KEY_LINE.match(line)
        if match is None or match.group(1) not in _FRONT_MATTER_KEYS:
            clean = False
            continue
        key, value = match.group(1), match.group(2)
        if key == "primary_language":
            language = value.strip("'\"")
            meta["language"] = None if language.lower() in ("", "null", "none", "~") else language
        elif key == "rotation_correction":
            try:
                degrees = int(value)
            except ValueError:
                clean = False
                continue
            if degrees % 90 or not 0 <= degrees < 360:
                clean = False
                continue
            meta["rotation_correction"] = degrees
        else:
            flag = _flag(value)
            if flag is None:
                clean = False
                continue
            meta[{"is_rotation_valid": "rotation_valid"}.get(key, key)] = flag
    return meta, clean


def parse_olmocr(raw: str) -> ParsedPage:
    """olmOCR-2's answer: YAML front matter, then the page as Markdown. Never raises.

    meta: ``language`` (primary_language, None for a page without text), ``rotation_valid``,
    ``rotation_correction``, ``is_table``, ``is_diagram`` (each only when the model gave a readable value) and
    ``front_matter``: ``"ok"``, ``"garbled"`` (some lines unreadable; the readable keys are kept), ``"unclosed"``
    (no closing fence: the leading ``key: value`` lines are taken as front matter, the rest as the page) or
    ``"missing"`` (no front matter with a known key: the whole answer is the page, a leading Markdown rule kept).
    ``rotate`` is the rotation_correction when the model says the page is not upright (``is_rotation_valid:
    false``), else 0.

    The front matter is read line by line rather than with a YAML library: five flat keys, and the answer of a
    looping or random model must not make a parser raise or allocate."""
    text = raw.lstrip("\ufeff").strip()
    lines = text.split("\n")
    if not lines or lines[0].strip() != _FENCE:
        return ParsedPage(text, {"front_matter": "missing"})
    closing = next(
        (i for i, line in enumerate(lines[1 : _MAX_FRONT_MATTER_LINES + 2], start=1) if line.strip() == _FENCE),
        None,
    )
    if closing is not None:
        meta, clean = _front_matter_fields(lines[1:closing])
        body = lines[closing + 1 :]
        state = "ok" if clean else "garbled"
    else:
        end = 1
        while end < len(lines) and end <= _MAX_FRONT_MATTER_LINES:
            match = _KEY_LINE.match(lines[end])
            if match is None or match.group(1) not in _FRONT_MATTER_KEYS:
                break
            end += 1
        meta, _ = _front_matter_fields(lines[1:end])
        body = lines[end:]
        state = "unclosed"
    if not meta:  # a Markdown rule, not front matter: nothing of the page is dropped
        return ParsedPage(text, {"front_matter": "missing"})
    meta["front_matter"] = state
    rotate = 0
    if meta.get("rotation_valid") is False:
        correction = meta.get("rotation_correction", 0)
        rotate = correction if isinstance(correction, int) else 0
    return ParsedPage("\n".join(body).strip(), meta, rotate=rotate)


OLMOCR_2 = ModelProfile(
    name="olmocr-2",
    models=("allenai/olmOCR-2-7B-1025",),
    prompt=OLMOCR_PROMPT,
    max_tokens=8000,
    max_pixels=1288 * 1288,
    max_side=1288,
    image_first=False,
    parse=parse_olmocr,
    licence="apache-2.0 (base Qwen2.5-VL-7B: apache-2.0)",
    parameters="8.3B",
    size_bytes=16_600_000_000,
    source="github.com/allenai/olmocr: prompts.build_no_anchoring_v4_yaml_prompt, pipeline.build_page_query",
)

OLMOCR_2_FP8 = replace(
    OLMOCR_2,
    name="olmocr-2-fp8",
    models=("allenai/olmOCR-2-7B-1025-FP8",),
    size_bytes=10_000_000_000,  # FP8 (E4M3) linear layers; embeddings, head and vision tower stay bf16
    source="as olmocr-2: the FP8 build of the same model (llm-compressor); fits an L4's 24 GB",
)

# --- any other Qwen2.5-VL ---------------------------------------------------------------------------------------

GENERIC_QWEN25_VL = ModelProfile(
    name="generic-qwen2.5-vl",
    models=(),
    prompt="Convert this page to Markdown. Return tables as HTML and equations as LaTeX.",
    max_tokens=4096,
    max_pixels=2_400_000,
    licence="see the model card",
    parameters="?",
    size_bytes=0,
    source="ours: for a Qwen2.5-VL model without a profile of its own",
)

PROFILES: dict[str, ModelProfile] = {
    p.name: p for p in (NANONETS_OCR_S, NANONETS_OCR2_3B, OLMOCR_2, OLMOCR_2_FP8, GENERIC_QWEN25_VL)
}


def profile_for(model_id: str, name: str | None = None) -> ModelProfile:
    """The profile named ``name`` (GNOSIS_VLM_PROFILE), else the one listing ``model_id`` (case-insensitively, as
    the hub matches ids), else the generic one."""
    if name is not None:
        try:
            return PROFILES[name]
        except KeyError:
            from gnosis_ocr.errors import ConfigError

            raise ConfigError(
                f"Unknown model profile {name!r}.", hint=f"Use one of: {', '.join(sorted(PROFILES))}."
            ) from None
    wanted = model_id.lower()
    for profile in PROFILES.values():
        if wanted in (m.lower() for m in profile.models):
            return profile
    logger.info("model %s has no profile of its own; reading it with %s", model_id, GENERIC_QWEN25_VL.name)
    return GENERIC_QWEN25_VL
