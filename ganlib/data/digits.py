"""Offline, deterministic generator for the default dataset: MNIST-like handwritten digits.

A new user who runs the pipeline with no data and no network still needs something worth training
a GAN on, and something a digit classifier can score. This module draws that dataset itself:
28x28 (or 32x32, 64x64) grayscale images of the digits 0-9, white anti-aliased strokes on black,
each digit fitted into a box of 20/28 of the frame and centred on its centre of mass, like MNIST.

How a digit is made:

* Every digit has a few hand-designed *templates* (a 7 with or without a crossbar, an open or a
  closed 4, a looped or a flat-based 2, ...). A template is a set of strokes, each a list of key
  points in a unit box; strokes that share a key point stay joined (that is how corners are made).
* Each image jitters the key points, runs a Catmull-Rom spline through them (so strokes are smooth
  curves, not polygons), bends the result with a smooth random displacement, and applies a random
  slant, rotation and aspect change. Templates come in a "handwritten" flavour (strong jitter,
  varying pen pressure) and a "print" flavour (clean shapes, even width), which gives the data set
  two distinct styles.
* The strokes are rendered analytically: every pixel's ink is its signed distance to the nearest
  stroke segment (with a per-point radius) passed through a linear ramp, which anti-aliases without
  supersampling and is cheap to vectorise over a whole batch of images.

No fonts are used on purpose: glyph rasterisation depends on the Pillow and FreeType versions, and
the output must be byte-identical on every machine. Everything random comes from one
``numpy.random.Generator`` consumed in a fixed order. The geometry is computed in float64 (where
transcendental functions and BLAS may differ by an ulp between machines) and then snapped to a
1/1024-pixel grid, so those differences disappear before the pixel stage; the pixel stage uses
only IEEE-exact float32 operations (+, -, *, /, sqrt, min, clip), which give the same bits
everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ganlib.errors import DataError

__all__ = ["SUPPORTED_IMAGE_SIZES", "check_digits_size", "generate_digits"]

SUPPORTED_IMAGE_SIZES: tuple[int, ...] = (28, 32, 64)


def check_digits_size(image_size: int) -> None:
    """``DataError`` (one line) unless the digits can be drawn at ``image_size`` px."""
    if image_size not in SUPPORTED_IMAGE_SIZES:
        raise DataError(f"data.image_size: the embedded digits are drawn at {SUPPORTED_IMAGE_SIZES} px, not "
                        f"{image_size}; use --image-size 64, or a dataset of larger images (--dataset folder, celeba)")

# MNIST fits each digit into a 20x20 box inside the 28x28 frame; keep that ratio at other sizes.
_BOX_FRACTION = 20.0 / 28.0
# Snap geometry to this many steps per pixel before rendering (see the module docstring).
_SNAP = 1024.0
# Images rendered together: the per-segment working arrays (chunk x pixels float32) then stay in
# the CPU cache, which matters more for speed than the number of numpy calls.
_RENDER_CHUNK = 128

Point = tuple[float, float]


@dataclass(frozen=True)
class _Template:
    """One way of writing a digit: strokes of key points in a unit box (x right, y down)."""

    strokes: tuple[tuple[Point, ...], ...]
    closed: tuple[bool, ...]
    handwritten: bool
    weight: float  # relative frequency among the digit's templates
    jitter: float  # scales the key point jitter; delicate shapes (a 1's flag) need less


def _t(
    *strokes: list[Point] | tuple[str, list[Point]],
    hand: bool = True,
    weight: float = 1.0,
    jitter: float = 1.0,
) -> _Template:
    """Build a template; a stroke given as ("closed", points) is a closed loop."""
    pts, closed = [], []
    for s in strokes:
        if isinstance(s, tuple) and s[0] == "closed":
            pts.append(tuple(s[1]))
            closed.append(True)
        else:
            pts.append(tuple(s))
            closed.append(False)
    return _Template(tuple(pts), tuple(closed), hand, weight, jitter)


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 8, start: float = -90.0) -> list[Point]:
    ang = np.deg2rad(start + 360.0 * np.arange(n) / n)
    return [(float(cx + rx * np.cos(a)), float(cy + ry * np.sin(a))) for a in ang]


# Shapes were drawn by eye on a unit box; the fitting step later rescales every digit to the
# target box anyway, so only proportions matter here.
# fmt: off
_TEMPLATES: dict[int, tuple[_Template, ...]] = {
    0: (
        # Loops are small relative to the jitter, so they get less of it or they turn polygonal.
        _t(("closed", _ellipse(0.5, 0.5, 0.32, 0.5)), weight=2.0, jitter=0.6),
        # Pen overshoots the start, as in quick handwriting.
        _t([(0.62, 0.03), (0.3, 0.1), (0.18, 0.5), (0.32, 0.92), (0.6, 0.98), (0.8, 0.6), (0.78, 0.2),
            (0.55, 0.0), (0.38, 0.08)], jitter=0.7),
        _t(("closed", _ellipse(0.5, 0.5, 0.4, 0.5)), hand=False),
    ),
    1: (
        _t([(0.5, 0.0), (0.49, 0.5), (0.47, 1.0)], weight=2.0),
        # A long or flat flag turns a 1 into a 7, so the flag is short, steep and jittered less.
        _t([(0.4, 0.17), (0.56, 0.0)], [(0.56, 0.0), (0.55, 0.5), (0.54, 1.0)], weight=1.5, jitter=0.5),
        _t([(0.34, 0.18), (0.55, 0.0)], [(0.55, 0.0), (0.55, 1.0)], [(0.3, 1.0), (0.8, 1.0)], hand=False),
    ),
    2: (
        _t([(0.14, 0.28), (0.35, 0.03), (0.66, 0.03), (0.82, 0.27), (0.62, 0.58), (0.14, 1.0)],
           [(0.14, 1.0), (0.5, 0.97), (0.9, 0.99)], weight=2.0),
        # Curly 2 with a small loop at the bottom left.
        _t([(0.14, 0.25), (0.4, 0.0), (0.75, 0.08), (0.76, 0.38), (0.45, 0.7), (0.22, 0.95), (0.12, 0.86),
            (0.28, 0.8), (0.55, 0.94), (0.9, 0.98)]),
        _t([(0.15, 0.22), (0.45, 0.0), (0.8, 0.2), (0.72, 0.48), (0.12, 1.0)], [(0.12, 1.0), (0.88, 1.0)],
           hand=False),
    ),
    3: (
        _t([(0.15, 0.12), (0.48, 0.0), (0.78, 0.16), (0.7, 0.38), (0.4, 0.47)],
           [(0.4, 0.47), (0.76, 0.6), (0.82, 0.84), (0.52, 1.0), (0.14, 0.88)], weight=2.0),
        # Flat-topped 3.
        _t([(0.15, 0.02), (0.82, 0.02)], [(0.82, 0.02), (0.42, 0.42)],
           [(0.42, 0.42), (0.75, 0.55), (0.84, 0.8), (0.52, 1.0), (0.14, 0.88)]),
        _t([(0.16, 0.15), (0.48, 0.0), (0.8, 0.2), (0.7, 0.42), (0.42, 0.48)],
           [(0.42, 0.48), (0.78, 0.58), (0.84, 0.8), (0.52, 1.0), (0.14, 0.86)], hand=False),
    ),
    4: (
        _t([(0.58, 0.0), (0.12, 0.66)], [(0.12, 0.66), (0.92, 0.66)], [(0.7, 0.28), (0.68, 1.0)], weight=2.0),
        # Open-topped 4: two down strokes joined by the bar.
        _t([(0.2, 0.0), (0.16, 0.58)], [(0.16, 0.58), (0.88, 0.56)], [(0.74, 0.02), (0.72, 1.0)], weight=1.5),
        _t([(0.66, 0.0), (0.1, 0.7)], [(0.1, 0.7), (0.92, 0.7)], [(0.66, 0.0), (0.66, 1.0)], hand=False),
    ),
    5: (
        _t([(0.8, 0.02), (0.26, 0.02)], [(0.26, 0.02), (0.2, 0.44)],
           [(0.2, 0.44), (0.52, 0.36), (0.8, 0.54), (0.8, 0.83), (0.5, 1.0), (0.14, 0.9)], weight=2.0),
        # Single-stroke 5 with the top bar drawn last.
        _t([(0.28, 0.0), (0.22, 0.45)],
           [(0.22, 0.45), (0.55, 0.38), (0.82, 0.62), (0.62, 0.95), (0.18, 0.92)],
           [(0.28, 0.0), (0.84, 0.0)]),
        _t([(0.82, 0.0), (0.25, 0.0)], [(0.25, 0.0), (0.22, 0.45)],
           [(0.22, 0.45), (0.55, 0.38), (0.82, 0.6), (0.75, 0.9), (0.45, 1.0), (0.15, 0.88)], hand=False),
    ),
    6: (
        _t([(0.74, 0.02), (0.42, 0.15), (0.2, 0.52), (0.24, 0.88), (0.5, 1.0), (0.76, 0.84), (0.72, 0.58),
            (0.46, 0.5), (0.22, 0.66)], weight=2.0),
        # Straighter back, small loop.
        _t([(0.66, 0.0), (0.36, 0.36), (0.22, 0.76), (0.42, 1.0), (0.72, 0.9), (0.7, 0.64), (0.44, 0.6),
            (0.24, 0.74)]),
        _t([(0.76, 0.05), (0.44, 0.1), (0.22, 0.45), (0.24, 0.85), (0.5, 1.0), (0.78, 0.82), (0.74, 0.56),
            (0.48, 0.48), (0.24, 0.62)], hand=False),
    ),
    7: (
        # A short bar or a bent stem reads as a 1 or a ">", hence the long bar and milder jitter.
        _t([(0.08, 0.04), (0.5, 0.02), (0.9, 0.02)], [(0.9, 0.02), (0.62, 0.48), (0.44, 1.0)], weight=2.0,
           jitter=0.75),
        # European 7 with a crossbar.
        _t([(0.08, 0.04), (0.9, 0.02)], [(0.9, 0.02), (0.62, 0.5), (0.46, 1.0)], [(0.38, 0.52), (0.84, 0.5)],
           jitter=0.75),
        _t([(0.12, 0.0), (0.88, 0.0)], [(0.88, 0.0), (0.4, 1.0)], hand=False),
    ),
    8: (
        # One-stroke figure eight crossing in the middle.
        _t(("closed", [(0.76, 0.14), (0.5, 0.0), (0.24, 0.14), (0.3, 0.36), (0.5, 0.48), (0.76, 0.64),
                       (0.76, 0.9), (0.5, 1.0), (0.24, 0.9), (0.24, 0.64), (0.5, 0.48), (0.72, 0.34)]),
           weight=2.0, jitter=0.75),
        # Two stacked loops.
        _t(("closed", _ellipse(0.5, 0.23, 0.22, 0.23)), ("closed", _ellipse(0.5, 0.73, 0.28, 0.27)),
           jitter=0.6),
        _t(("closed", _ellipse(0.5, 0.24, 0.24, 0.24)), ("closed", _ellipse(0.5, 0.74, 0.3, 0.26)),
           hand=False),
    ),
    9: (
        _t(("closed", _ellipse(0.46, 0.26, 0.27, 0.26, start=0.0)), [(0.73, 0.26), (0.71, 0.62), (0.68, 1.0)],
           weight=2.0, jitter=0.7),
        # Curved tail.
        _t(("closed", _ellipse(0.48, 0.26, 0.28, 0.26, start=0.0)), [(0.76, 0.26), (0.7, 0.72), (0.4, 1.0)],
           jitter=0.7),
        _t(("closed", _ellipse(0.46, 0.27, 0.28, 0.27, start=0.0)), [(0.74, 0.27), (0.74, 0.7), (0.6, 0.96),
                                                                    (0.3, 0.98)], hand=False),
    ),
}
# fmt: on


def _catmull_rom_weights(n_keys: int, closed: bool, per_span: int) -> np.ndarray:
    """Weights (n_samples, n_keys) such that weights @ keys samples a uniform Catmull-Rom spline.

    The spline is linear in its key points, so one small matrix per stroke turns a whole batch of
    jittered key points into curve samples with a single matmul.
    """
    if n_keys == 1:
        return np.ones((1, 1))
    # Rows of `ctrl` are the control points P[-1], P[0], ..., P[K-1], P[K] as combinations of the
    # keys. A closed loop wraps around; an open stroke needs a phantom point beyond each end, and
    # reflecting the neighbour (2*P0 - P1) keeps the end tangent pointing along the stroke.
    ctrl = np.zeros((n_keys + 2, n_keys))
    ctrl[1:-1] = np.eye(n_keys)
    if closed:
        ctrl[0, n_keys - 1] = 1.0
        ctrl[-1, 0] = 1.0
        # A closed loop also needs P[K+1] = P[1] for its last span.
        ctrl = np.concatenate([ctrl, np.eye(n_keys)[1:2]])
    else:
        ctrl[0, 0], ctrl[0, 1] = 2.0, -1.0
        ctrl[-1, -1], ctrl[-1, -2] = 2.0, -1.0
    n_spans = n_keys if closed else n_keys - 1
    t = np.arange(per_span) / per_span
    basis = 0.5 * np.stack(
        [-t + 2 * t**2 - t**3, 2 - 5 * t**2 + 3 * t**3, t + 4 * t**2 - 3 * t**3, -(t**2) + t**3], axis=1
    )
    rows = [basis @ ctrl[span : span + 4] for span in range(n_spans)]
    end = np.zeros((1, n_keys))
    end[0, 0 if closed else n_keys - 1] = 1.0
    rows.append(end)
    return np.concatenate(rows, axis=0)


@dataclass(frozen=True)
class _Compiled:
    """A template turned into matrices: key points (K, 2) and segment endpoint weights (S, K)."""

    keys: np.ndarray
    w_start: np.ndarray
    w_end: np.ndarray
    handwritten: bool
    jitter: float


def _compile(template: _Template, per_span: int) -> _Compiled:
    # Strokes meeting at the same coordinates share one key point, so jitter moves both ends
    # together and the corner stays closed.
    key_index: dict[Point, int] = {}
    for stroke in template.strokes:
        for p in stroke:
            key_index.setdefault(p, len(key_index))
    n_keys = len(key_index)
    starts, ends = [], []
    for stroke, closed in zip(template.strokes, template.closed, strict=True):
        local = _catmull_rom_weights(len(stroke), closed, per_span)
        scatter = np.zeros((len(stroke), n_keys))
        for i, p in enumerate(stroke):
            scatter[i, key_index[p]] = 1.0
        samples = local @ scatter
        starts.append(samples[:-1])
        ends.append(samples[1:])
    keys = np.array(list(key_index), dtype=np.float64)
    return _Compiled(
        keys, np.concatenate(starts), np.concatenate(ends), template.handwritten, template.jitter
    )


def _snap(x: np.ndarray) -> np.ndarray:
    return (np.round(x * _SNAP) / _SNAP).astype(np.float32)


def _glyph_geometry(
    tpl: _Compiled, n: int, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random segments for ``n`` images of one template, in pixel coordinates.

    Returns (start, end, r_start, r_end, softness): (n, S, 2), (n, S, 2), (n, S), (n, S), (n,),
    all float32 snapped to the 1/1024 pixel grid.
    """
    px = size / 28.0  # one MNIST pixel at this image size
    hand = tpl.handwritten
    k = tpl.keys.shape[0]

    # Key point jitter: the main source of "same digit, different hand".
    sigma = (0.045 if hand else 0.018) * tpl.jitter
    keys = tpl.keys[None] + rng.normal(0.0, sigma, size=(n, k, 2))
    # Pen pressure per key point, interpolated along the stroke by the same spline weights.
    pressure = 1.0 + (rng.uniform(-0.3, 0.3, size=(n, k)) if hand else np.zeros((n, k)))

    a = np.einsum("sk,nkd->nsd", tpl.w_start, keys)
    b = np.einsum("sk,nkd->nsd", tpl.w_end, keys)
    pa = np.clip(np.einsum("sk,nk->ns", tpl.w_start, pressure), 0.55, 1.6)
    pb = np.clip(np.einsum("sk,nk->ns", tpl.w_end, pressure), 0.55, 1.6)

    # Smooth "elastic" bend: one low-frequency wave per axis, applied to the curve samples so
    # strokes wobble coherently instead of pixel noise.
    amp = rng.uniform(0.0, 0.035 if hand else 0.012, size=(n, 1, 2))
    freq = rng.uniform(0.6, 1.6, size=(n, 1, 2, 2))
    phase = rng.uniform(0.0, 2 * np.pi, size=(n, 1, 2))

    def bend(p: np.ndarray) -> np.ndarray:
        arg = 2 * np.pi * (p[..., None, :] * freq).sum(-1) + phase
        return p + amp * np.sin(arg)

    a, b = bend(a), bend(b)

    # Global affine about the box centre: slant (handwriting leans right more than left), aspect,
    # rotation. Print digits get a narrower range.
    slant = rng.uniform(-0.15, 0.35, size=n) if hand else rng.uniform(-0.05, 0.15, size=n)
    aspect = rng.uniform(0.75, 1.25, size=n) if hand else rng.uniform(0.85, 1.15, size=n)
    angle = np.deg2rad(np.clip(rng.normal(0.0, 7.0, size=n), -15.0, 15.0))
    cos, sin = np.cos(angle), np.sin(angle)
    m = np.empty((n, 2, 2))
    # x' = aspect * x - slant * y (y points down, so a positive slant leans the top right),
    # then rotate.
    m[:, 0, 0] = cos * aspect
    m[:, 0, 1] = -cos * slant - sin
    m[:, 1, 0] = sin * aspect
    m[:, 1, 1] = -sin * slant + cos
    a = np.einsum("nij,nsj->nsi", m, a - 0.5)
    b = np.einsum("nij,nsj->nsi", m, b - 0.5)

    # Fit the skeleton into the digit box (largest side), like MNIST's size normalisation. The
    # box is shrunk a little because the stroke width adds to the drawn size.
    both = np.concatenate([a, b], axis=1)
    lo, hi = both.min(axis=1), both.max(axis=1)
    extent = np.maximum((hi - lo).max(axis=1), 1e-6)
    fill = rng.uniform(0.78, 0.95, size=n)
    scale = fill * _BOX_FRACTION * size / extent
    a, b = a * scale[:, None, None], b * scale[:, None, None]
    lo, hi = lo * scale[:, None], hi * scale[:, None]

    radius = rng.uniform(0.9, 1.6, size=n) * px  # half stroke width
    ra, rb = radius[:, None] * pa, radius[:, None] * pb
    softness = rng.uniform(0.7, 1.5, size=n) * px  # width of the anti-aliasing ramp

    # Centre on the ink's centre of mass (segment midpoints weighted by length and width), as
    # MNIST does, plus a small random offset.
    seg_len = np.sqrt(((b - a) ** 2).sum(-1)) + 1e-6
    mass = seg_len * (ra + rb)
    com = ((a + b) * 0.5 * mass[..., None]).sum(1) / mass.sum(1)[:, None]
    offset = np.clip(rng.normal(0.0, 0.6, size=(n, 2)), -1.5, 1.5) * px
    shift = size / 2.0 + offset - com
    # Keep the whole stroke, anti-aliasing fringe included, inside the frame with a pixel to spare.
    margin = (1.0 * px + np.maximum(ra, rb).max(axis=1) + 0.5 * softness)[:, None]
    shift = np.clip(shift, margin - lo, size - margin - hi)
    a, b = a + shift[:, None, :], b + shift[:, None, :]
    return _snap(a), _snap(b), _snap(ra), _snap(rb), _snap(softness)


def _render(
    a: np.ndarray, b: np.ndarray, ra: np.ndarray, rb: np.ndarray, soft: np.ndarray, size: int
) -> np.ndarray:
    """Rasterise variable-width segments into uint8 images of shape (n, size, size).

    Ink = clip(0.5 - (distance - radius) / softness, 0, 1): a pixel on the stroke edge is half
    grey, which is what supersampling a sharp pen would give, at a fraction of the cost.
    """
    n, n_seg, _ = a.shape
    coords = np.arange(size, dtype=np.float32) + np.float32(0.5)
    gy, gx = np.meshgrid(coords, coords, indexing="ij")
    gx, gy = gx.reshape(-1), gy.reshape(-1)
    d = b - a
    len2 = (d * d).sum(-1)
    inv_len2 = np.float32(1.0) / np.maximum(len2, np.float32(1e-12))
    dr = rb - ra
    out = np.empty((n, size * size), dtype=np.uint8)
    for i0 in range(0, n, _RENDER_CHUNK):
        i1 = min(n, i0 + _RENDER_CHUNK)
        c = i1 - i0
        best = np.full((c, size * size), np.inf, dtype=np.float32)
        dx = np.empty_like(best)
        dy = np.empty_like(best)
        t = np.empty_like(best)
        tmp = np.empty_like(best)
        for s in range(n_seg):
            ax, ay = a[i0:i1, s, 0, None], a[i0:i1, s, 1, None]
            ux, uy = d[i0:i1, s, 0, None], d[i0:i1, s, 1, None]
            np.subtract(gx, ax, out=dx)
            np.subtract(gy, ay, out=dy)
            # Projection parameter of the pixel onto the segment, clamped to the segment.
            np.multiply(dx, ux, out=t)
            np.multiply(dy, uy, out=tmp)
            np.add(t, tmp, out=t)
            np.multiply(t, inv_len2[i0:i1, s, None], out=t)
            np.clip(t, 0.0, 1.0, out=t)
            np.multiply(t, ux, out=tmp)
            np.subtract(dx, tmp, out=dx)
            np.multiply(t, uy, out=tmp)
            np.subtract(dy, tmp, out=dy)
            np.multiply(dx, dx, out=dx)
            np.multiply(dy, dy, out=dy)
            np.add(dx, dy, out=dx)
            np.sqrt(dx, out=dx)
            # Radius interpolated along the segment gives tapering strokes.
            np.multiply(t, dr[i0:i1, s, None], out=t)
            np.add(t, ra[i0:i1, s, None], out=t)
            np.subtract(dx, t, out=dx)
            np.minimum(best, dx, out=best)
        np.divide(best, soft[i0:i1, None], out=best)
        np.subtract(np.float32(0.5), best, out=best)
        np.clip(best, 0.0, 1.0, out=best)
        np.multiply(best, np.float32(255.0), out=best)
        out[i0:i1] = np.rint(best).astype(np.uint8)
    return out.reshape(n, size, size)


def generate_digits(num_images: int, seed: int, image_size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Generate a labelled set of MNIST-like handwritten digit images, offline.

    Args:
        num_images: number of images N, at least 1.
        seed: seed for ``numpy.random.default_rng``; the only source of randomness.
        image_size: side of the square images, one of ``SUPPORTED_IMAGE_SIZES`` (28, 32, 64).

    Returns:
        (images, labels): images is uint8 of shape (N, 1, image_size, image_size), 0 = background,
        255 = full ink; labels is int64 of shape (N,) with values 0..9, in random order. Each class
        has N // 10 images and the first N % 10 classes one more. The same seed gives
        byte-identical output on any machine; different seeds give different images.

    Raises:
        DataError: num_images < 1, image_size not supported, or seed not a non-negative integer.
    """
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 1:
        raise DataError(f"generate_digits: num_images must be an integer >= 1, got {num_images!r}")
    if isinstance(image_size, bool):
        raise DataError(f"generate_digits: image_size must be an integer, got {image_size!r}")
    check_digits_size(image_size)
    # default_rng(None) would silently draw fresh entropy and break reproducibility.
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"generate_digits: seed must be an integer >= 0, got {seed!r}")
    num_images, image_size = int(num_images), int(image_size)

    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_images, dtype=np.int64) % 10)
    images = np.empty((num_images, image_size, image_size), dtype=np.uint8)
    # Larger images need finer polylines for the curves to stay round.
    per_span = 3 if image_size <= 32 else 4

    # Fixed order of random draws: class by class, template by template. The output depends
    # only on the seed, never on how the work is batched.
    for digit in range(10):
        where = np.flatnonzero(labels == digit)
        if where.size == 0:
            continue
        templates = _TEMPLATES[digit]
        weights = np.array([tp.weight for tp in templates])
        choice = rng.choice(len(templates), size=where.size, p=weights / weights.sum())
        for ti, template in enumerate(templates):
            sel = where[choice == ti]
            if sel.size == 0:
                continue
            geom = _glyph_geometry(_compile(template, per_span), sel.size, image_size, rng)
            images[sel] = _render(*geom, size=image_size)
    return images[:, None], labels
