"""Pictures: two browsers side by side in one screenshot, and the captioned animation of the whole tour."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, features

BACKGROUND = "#E2E8F0"  # slate-200, around and between the browsers
LABEL_HEIGHT = 40
GUTTER = 16
CAPTION_HEIGHT = 52
CAPTION_BACKGROUND = "#312E81"  # indigo-900: the app's primary, darkened so white text reads well
ANIMATION_WIDTH = 960
ANIMATION_BODY = 640  # height of the picture area below the caption
FRAME_MS = 3200
LAST_FRAME_MS = 5000
USER_COLORS = ("#4F46E5", "#0EA5E9")  # Alice indigo, Bob sky


def load(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png)).convert("RGB")


def font(size: int, bold: bool = False) -> ImageFont.ImageFont:
    """DejaVu Sans when the system has it (it does on Debian/Ubuntu), else Pillow's own font.

    Neither has CJK glyphs: captions are kept to Latin letters.
    """
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(name, size)
    except OSError:
        return ImageFont.load_default(size)


def side_by_side(shots: Sequence[tuple[str, Image.Image]]) -> Image.Image:
    """The browsers next to each other, each under a label with its user's name."""
    width = sum(image.width for _, image in shots) + GUTTER * (len(shots) + 1)
    height = max(image.height for _, image in shots) + LABEL_HEIGHT + GUTTER
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    x = GUTTER
    for index, (label, image) in enumerate(shots):
        color = USER_COLORS[index % len(USER_COLORS)]
        middle = LABEL_HEIGHT // 2 + 2
        draw.ellipse((x + 2, middle - 7, x + 16, middle + 7), fill=color)
        draw.text((x + 26, middle), label, fill="#0F172A", font=font(19, bold=True), anchor="lm")
        canvas.paste(image, (x, LABEL_HEIGHT))
        draw.rectangle((x - 1, LABEL_HEIGHT - 1, x + image.width, LABEL_HEIGHT + image.height), outline="#94A3B8")
        x += image.width + GUTTER
    return canvas


def animation(frames: Sequence[tuple[Path, str]], target: Path) -> Path:
    """An animated WebP (GIF where Pillow lacks WebP) of the screenshots, each under its caption.

    Every screenshot is scaled to fit one ANIMATION_WIDTH × ANIMATION_BODY box (never enlarged, so that a small
    picture such as the metrics panel stays sharp), so that pictures of different shapes play as one steady film.
    """
    rendered = [_frame(Image.open(path).convert("RGB"), caption, number)
                for number, (path, caption) in enumerate(frames, 1)]
    durations = [FRAME_MS] * (len(rendered) - 1) + [LAST_FRAME_MS]
    if features.check("webp"):
        target = target.with_suffix(".webp")
        rendered[0].save(target, save_all=True, append_images=rendered[1:], duration=durations, loop=0,
                         quality=82, method=5)
    else:
        target = target.with_suffix(".gif")
        paletted = [frame.quantize(colors=256, method=Image.Quantize.MEDIANCUT) for frame in rendered]
        paletted[0].save(target, save_all=True, append_images=paletted[1:], duration=durations, loop=0,
                         optimize=True)
    return target


def _frame(picture: Image.Image, caption: str, number: int) -> Image.Image:
    frame = Image.new("RGB", (ANIMATION_WIDTH, CAPTION_HEIGHT + ANIMATION_BODY), BACKGROUND)
    draw = ImageDraw.Draw(frame)
    draw.rectangle((0, 0, ANIMATION_WIDTH, CAPTION_HEIGHT), fill=CAPTION_BACKGROUND)
    draw.text((18, CAPTION_HEIGHT // 2), f"{number}", fill="#A5B4FC", font=font(20, bold=True), anchor="lm")
    size = 19
    while size > 12 and draw.textlength(caption, font=font(size)) > ANIMATION_WIDTH - 70:
        size -= 1
    draw.text((52, CAPTION_HEIGHT // 2), caption, fill="white", font=font(size), anchor="lm")
    scale = min(1.0, ANIMATION_WIDTH / picture.width, ANIMATION_BODY / picture.height)
    if scale < 1:
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.LANCZOS)
    frame.paste(picture, ((ANIMATION_WIDTH - picture.width) // 2,
                          CAPTION_HEIGHT + (ANIMATION_BODY - picture.height) // 2))
    return frame
