"""Decoding and transforming single images into the store's form.

Everything a prepared image goes through, whatever its source:

1. decode (image files: PNG, JPEG, WebP, BMP, GIF, TIFF; first frame of animations), with the
   EXIF orientation applied;
2. channels: palette, 1-bit, 16-bit, CMYK, YCbCr, LAB and HSV images are converted; images with
   transparency are composited on a white or black background; then grayscale ("L", ITU-R 601-2
   luma) or RGB;
3. geometry: the centred square of side min(W, H) is resized to ``size`` x ``size`` (Lanczos,
   antialiased) — the same as "resize the shorter side to ``size``, then centre-crop". Where the
   shorter side already is ``size`` the square is cut out without resampling, so pixel values
   survive exactly.

This module imports only numpy and Pillow (never torch): it runs inside the decoding worker
processes, and keeping them small is what keeps preparation's memory bounded.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
RESAMPLE = Image.Resampling.LANCZOS
RESAMPLE_NAME = "lanczos"
# Larger images are skipped (listed in the manifest with the reason): a 170-megapixel PNG took 3.3 GB in a
# worker before its resize. JPEGs are first decoded at a reduced scale (draft), so only huge ones are.
MAX_DECODE_PIXELS = 64_000_000

_BACKGROUND = {"white": 255, "black": 0}
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ORIENTATION = 0x0112  # the EXIF tag saying how to rotate/flip the stored pixels for display


@dataclass(frozen=True)
class ImageSpec:
    """What every prepared image becomes.

    ``channels``: "grayscale" -> 1 channel; "rgb" -> 3 channels; "auto" -> files decode to RGB
    (the store collapses to 1 channel afterwards if every image was gray), arrays keep their own
    channel count (2 and 4 lose their alpha). ``background``: "white" or "black".
    """

    size: int
    channels: str = "auto"
    background: str = "white"


@dataclass
class ChunkResult:
    """The outcome of one chunk of N inputs.

    ``images``: uint8 (K, C, size, size) for the K inputs that decoded, in input order;
    ``ok``: bool (N,) which inputs those are; ``reasons``: (input index, why it was skipped);
    ``gray``: bool (K,) image k has equal R, G and B (always True for 1 channel);
    ``upscaled``: bool (K,) image k's shorter side was below ``size``.
    """

    images: np.ndarray
    ok: np.ndarray
    gray: np.ndarray
    upscaled: np.ndarray
    reasons: list[tuple[int, str]] = field(default_factory=list)


class ImageSkipped(Exception):
    """An input that cannot become a prepared image; the message is the reason shown to the user."""


def _open(path: str) -> Image.Image:
    # Separate so that tests can make a file unreadable even when they run as root.
    return Image.open(path)


def _wide_gray_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale -> 8-bit 'L', scaling by the value range's width."""
    a = np.asarray(im)
    if im.mode == "F":
        # Float images have no standard range; [0, 1] is the common convention, else clip to 8 bits.
        a = a * 255.0 if np.nanmax(a) <= 1.0 else a
        return Image.fromarray(np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8), "L")
    # 16-bit: 65535 -> 255 exactly, rounding to nearest (a / 257 maps 257*k to k).
    return Image.fromarray(np.clip(np.rint(a.astype(np.float64) / 257.0), 0, 255).astype(np.uint8), "L")


def normalise_mode(im: Image.Image, channels: str, background: str) -> Image.Image:
    """Any Pillow image -> mode 'L' (channels 'grayscale') or 'RGB' (otherwise), alpha composited."""
    if im.mode in _WIDE_GRAY_MODES or im.mode == "F":
        im = _wide_gray_to_l(im)
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode == "P" or (im.mode in ("L", "RGB") and "transparency" in im.info):
        # Palette entries (or a tRNS colour key) may be transparent; RGBA makes that explicit.
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (_BACKGROUND[background],) * 3 + (255,))
        im = Image.alpha_composite(bg, rgba).convert("RGB")
    if im.mode not in ("L", "RGB"):  # CMYK, YCbCr, LAB, HSV
        im = im.convert("RGB")
    want = "L" if channels == "grayscale" else "RGB"
    return im if im.mode == want else im.convert(want)


def square_resize(im: Image.Image, size: int) -> Image.Image:
    """The centred square of side min(W, H), resized to (size, size); exact when no resize is needed."""
    w, h = im.size
    side = min(w, h)
    if side == size:
        left, top = (w - side) // 2, (h - side) // 2
        return im if (w, h) == (size, size) else im.crop((left, top, left + side, top + side))
    left, top = (w - side) / 2, (h - side) / 2  # float box: centred to the sub-pixel
    return im.resize((size, size), RESAMPLE, box=(left, top, left + side, top + side))


def decode_file(path: str, spec: ImageSpec) -> tuple[np.ndarray, bool]:
    """One image file -> (uint8 (size, size, C) array, whether it was upscaled).

    C is 1 for channels 'grayscale', else 3. Raises ``ImageSkipped`` with a short reason for any
    file that cannot be decoded completely (missing, unreadable, not an image, truncated, corrupt).
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode's surrogates: such a name breaks manifests, logs and reports
        raise ImageSkipped("file name is not valid UTF-8; rename the file to use it") from None
    try:
        with warnings.catch_warnings():
            # Pillow warns (and then errors) on decompression bombs; the error is what we report.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open(path) as im:
                if getattr(im, "n_frames", 1) > 1:
                    im.seek(0)  # animated GIF/WebP, multi-page TIFF: the first frame
                if im.format == "JPEG" and min(im.size) >= 2 * spec.size:
                    # Decode at a reduced DCT scale that still keeps the shorter side >= 2 * size.
                    im.draft(im.mode, (2 * spec.size, 2 * spec.size))
                if im.width * im.height > MAX_DECODE_PIXELS:  # what a worker may hold at full size
                    raise ImageSkipped(f"{im.width}x{im.height} pixels is above the {MAX_DECODE_PIXELS / 1e6:g}-"
                                       "megapixel decoding budget that bounds preparation's memory; downscale it first")
                im.load()
                upscaled = min(im.size) < spec.size
                if im.getexif().get(_ORIENTATION, 1) != 1:  # most files have none: skip the copy
                    im = ImageOps.exif_transpose(im)
                im = square_resize(normalise_mode(im, spec.channels, spec.background), spec.size)
                array = np.asarray(im, dtype=np.uint8)
    except ImageSkipped:
        raise
    except Image.UnidentifiedImageError:
        raise ImageSkipped("not a readable image (unknown format, empty, or not an image at all)") from None
    except Exception as err:  # noqa: BLE001  decoders raise many types on bad input; each is a reason
        text = " ".join(str(err).split()) or type(err).__name__
        raise ImageSkipped(f"{type(err).__name__}: {text}") from None
    return (array[:, :, None] if array.ndim == 2 else array), upscaled


def convert_array(image: np.ndarray, spec: ImageSpec) -> tuple[np.ndarray, bool]:
    """One uint8 (H, W, C) array, C in 1-4 (2 and 4 with alpha) -> (uint8 (size, size, C'), upscaled).

    C' is 1 for 'grayscale', 3 for 'rgb', and for 'auto' 1 or 3 following the input (alpha
    composited away). Pixels are copied unchanged where neither channels nor size change.
    """
    h, w, c = image.shape
    out_c = {"grayscale": 1, "rgb": 3}.get(spec.channels, 1 if c <= 2 else 3)
    upscaled = min(h, w) < spec.size
    if h == w == spec.size and c == out_c:
        return image, False
    if h == w == spec.size and (c, out_c) == (1, 3):
        return np.repeat(image, 3, axis=2), False
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[c]
    im = Image.fromarray(image[:, :, 0] if c == 1 else np.ascontiguousarray(image), mode)
    im = square_resize(normalise_mode(im, "grayscale" if out_c == 1 else "rgb", spec.background), spec.size)
    array = np.asarray(im, dtype=np.uint8)
    return (array[:, :, None] if array.ndim == 2 else array), upscaled


def _finish(rows: list[np.ndarray], ok: np.ndarray, reasons: list[tuple[int, str]], upscaled: list[bool],
            spec: ImageSpec, channels: int) -> ChunkResult:
    if rows:
        images = np.ascontiguousarray(np.stack(rows).transpose(0, 3, 1, 2))  # (K, H, W, C) -> (K, C, H, W)
    else:
        images = np.empty((0, channels, spec.size, spec.size), dtype=np.uint8)
    if channels == 3:
        same = (images[:, 0] == images[:, 1]) & (images[:, 1] == images[:, 2])
        gray = same.all(axis=(1, 2))
    else:
        gray = np.ones(len(images), dtype=bool)
    return ChunkResult(images, ok, gray, np.asarray(upscaled, dtype=bool).reshape(-1), reasons)


def process_files(paths: Sequence[str], spec: ImageSpec) -> ChunkResult:
    """Decode a chunk of image files; unreadable ones are reported in ``reasons``, not raised."""
    rows, reasons, upscaled = [], [], []
    ok = np.zeros(len(paths), dtype=bool)
    for i, path in enumerate(paths):
        try:
            array, up = decode_file(path, spec)
        except ImageSkipped as skip:
            reasons.append((i, str(skip)))
            continue
        rows.append(array)
        ok[i] = True
        upscaled.append(up)
    return _finish(rows, ok, reasons, upscaled, spec, 1 if spec.channels == "grayscale" else 3)


def process_arrays(images: np.ndarray, spec: ImageSpec) -> ChunkResult:
    """Transform a chunk of uint8 (N, H, W, C) images; every one of them succeeds."""
    converted = [convert_array(image, spec) for image in images]
    c = images.shape[3]
    channels = {"grayscale": 1, "rgb": 3}.get(spec.channels, 1 if c <= 2 else 3)
    return _finish([a for a, _ in converted], np.ones(len(images), dtype=bool), [],
                   [up for _, up in converted], spec, channels)


def process_task(task: tuple[str, object], spec: ImageSpec) -> ChunkResult:
    """Entry point of the decoding workers: ("files", [path, ...]) or ("arrays", uint8 (N, H, W, C))."""
    kind, payload = task
    if kind == "files":
        return process_files(payload, spec)  # type: ignore[arg-type]
    return process_arrays(payload, spec)  # type: ignore[arg-type]


def is_image_file(path: Path | str) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)
