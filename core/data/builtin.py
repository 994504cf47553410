"""The built-in dataset: procedurally generated landscape photos and impressionist paintings.

Offline, deterministic and fast (numpy + PIL only), so the quickstart and the tests need no
download. Every image is rendered from its own seed in two steps:

1. `render_scene` lays out a landscape of one kind (forest, meadow, mountain, sea, sunset) with a
   random composition: horizon height, hills, trees, waves, sun, clouds, jittered colours. It also
   returns a region map (sky, water, ground, tree, rock, sun) that the two looks below use.
2. A domain look:
   - `photo_look`: natural saturated colours, fine detail (grass, leaves, ripples), exposure and
     white-balance jitter, vignette, sensor noise.
   - `painting_look`: the impressionist recipe: a softer pastel palette with blue-violet shadows,
     short oriented brush strokes whose colours are sampled from the scene, canvas weave.

Photos and paintings show the same kinds of scenes but never the same scene (unpaired, like the
Kaggle Monet set), and the two domains differ in palette, contrast and texture, so a GAN has
something real to learn and the FID between the domains is large.

    image = render("sea", "monet", seed=(0, 1, 7), size=64)   # a PIL RGB image, 64 x 64
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

GENERATOR_VERSION = 1  # bump whenever the pictures change: it is part of the cache key
KINDS = ("forest", "meadow", "mountain", "sea", "sunset")  # scene kinds = class labels of the set
DOMAINS = ("photo", "monet")

SKY, WATER, GROUND, TREE, ROCK, SUN = range(6)  # region ids in the map render_scene returns
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # Rec. 601 luma weights

Field = np.ndarray  # float32 (S, S, 3) RGB in [0, 1] (values may stray outside until the final clip)


def render(kind: str, domain: str, seed: Sequence[int], size: int) -> Image.Image:
    """One square RGB image of `size` px: a scene of `kind` in the look of `domain`."""
    if kind not in KINDS or domain not in DOMAINS:
        raise ValueError(f"kind must be one of {KINDS} and domain one of {DOMAINS}, got {kind!r}, {domain!r}")
    rng = np.random.default_rng(list(seed))
    scene, region = render_scene(kind, rng, size)
    look = photo_look if domain == "photo" else painting_look
    rgb = look(rng, scene, region)
    return Image.fromarray((np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


# --- Building blocks -----------------------------------------------------------------------------


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in [0, 1]: Y (S, 1) from the top and X (1, S) from the left (broadcast together)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return c[:, None], c[None, :]


def _noise(rng: np.random.Generator, size: int, rows: int, cols: int) -> np.ndarray:
    """Smooth value noise, (S, S) around [0, 1]: a random (rows+1, cols+1) grid upsampled bicubically.
    Fewer cols than rows stretches the features horizontally (clouds, waves)."""
    rows, cols = min(rows, size), min(cols, size)
    grid = rng.random((rows + 1, cols + 1), dtype=np.float32)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC))


def _fractal(rng: np.random.Generator, size: int, rows: int, cols: int, octaves: int = 3) -> np.ndarray:
    """Sum of `octaves` noise layers, each twice as fine and half as strong, (S, S) around [0, 1]."""
    weights = [0.5**k for k in range(octaves)]
    total = sum(w * _noise(rng, size, rows * 2**k, cols * 2**k) for k, w in enumerate(weights))
    return total / sum(weights)


def _profile(rng: np.random.Generator, size: int, knots: int, octaves: int = 4) -> np.ndarray:
    """A jagged 1-D curve over x, (S,) in [0, 1]: linear interpolation of random knots, in octaves."""
    x = np.linspace(0.0, 1.0, size, dtype=np.float32)
    total = np.zeros(size, np.float32)
    for k in range(octaves):
        n = knots * 2**k
        total += 0.5**k * np.interp(x, np.linspace(0.0, 1.0, n + 1), rng.random(n + 1))
    return (total - total.min()) / (np.ptp(total) + 1e-6)


def _colour(rng: np.random.Generator, rgb: Sequence[float], jitter: float = 0.05) -> np.ndarray:
    """A palette colour (3,) with a random shift of about `jitter` per channel."""
    return np.clip(np.asarray(rgb, np.float32) + rng.normal(0.0, jitter, 3).astype(np.float32), 0.0, 1.0)


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _fill(img: Field, region: np.ndarray, mask: np.ndarray, colour, rid: int) -> None:
    """Paint `colour` ((3,), (S, 1, 3) or (S, S, 3)) where `mask` (S, S) is true, and label it `rid`."""
    img[...] = np.where(mask[..., None], colour, img)
    region[mask] = rid


def _blend(img: Field, alpha: np.ndarray, colour) -> None:
    """Soft paint: img = img * (1 - alpha) + colour * alpha, with alpha (S, S) in [0, 1]."""
    a = alpha[..., None]
    img[...] = img * (1.0 - a) + colour * a


# --- Scene elements ------------------------------------------------------------------------------


def _sky(rng, Y, X, horizon: float, stops: Sequence[Sequence[float]]) -> Field:
    """A vertical gradient through the colour `stops` (top ... horizon), (S, S, 3)."""
    stops = np.stack([_colour(rng, s, 0.04) for s in stops])  # (K, 3)
    t = np.clip(Y[:, 0] / horizon, 0.0, 1.0) ** 0.8 * (len(stops) - 1)  # (S,) position along the stops
    i = np.minimum(t.astype(int), len(stops) - 2)
    f = (t - i)[:, None]
    rows = stops[i] * (1.0 - f) + stops[i + 1] * f  # (S, 3)
    return np.broadcast_to(rows[:, None, :], (Y.shape[0], X.shape[1], 3)).astype(np.float32)


def _clouds(rng, img, Y, horizon, colour, cover: float) -> None:
    """Soft clouds stretched horizontally; `cover` in [0, 1] is how much of the sky they take."""
    n = _fractal(rng, img.shape[0], 6, 2)
    threshold = 0.68 - 0.28 * cover
    alpha = _smoothstep(threshold, threshold + 0.14, n) * (Y < horizon - 0.02) * 0.9
    shade = (0.82 + 0.35 * (n - threshold))[..., None]  # denser cloud, brighter top
    _blend(img, alpha, colour * shade)


def _sun(img, region, Y, X, cx: float, cy: float, radius: float, colour) -> None:
    d = np.sqrt((X - cx) ** 2 + (Y - cy) ** 2)  # (S, S) distance to the centre, image widths
    _blend(img, 0.6 * np.exp(-((d / (4.0 * radius)) ** 2)), colour)  # glow
    _fill(img, region, d < radius, colour, SUN)


def _water(rng, img, region, Y, horizon, far, near, waviness: float, foam: float) -> None:
    """Water below the horizon: mirrored scene above it, a far-to-near colour ramp, perspective waves."""
    size = img.shape[0]
    rows = np.arange(size)
    mirror = np.clip(np.round(2 * horizon * size - rows - 1).astype(int), 0, size - 1)  # (S,) reflected rows
    depth = np.clip((Y - horizon) / (1.0 - horizon), 0.0, 1.0)  # (S, 1) 0 at the horizon, 1 at the bottom
    ramp = far * (1.0 - depth[..., None]) + near * depth[..., None]  # (S, 1, 3)
    water = ramp * 0.62 + img[mirror] * 0.38 * (1.0 - 0.5 * depth[..., None])
    # Waves: crests get closer together towards the horizon (1 / distance), broken up by noise.
    phase = 3.0 * _noise(rng, size, 3, 8)
    waves = 0.5 + 0.5 * np.sin(rng.uniform(0.6, 1.0) / (Y - horizon + 0.04) + phase)  # (S, S)
    broken = _noise(rng, size, 16, 4)  # horizontal streaks: crests come and go along x
    water = water * (1.0 + waviness * (waves - 0.5) * (0.4 + broken))[..., None]
    caps = _smoothstep(0.85, 1.0, waves) * (broken > 1.0 - foam)  # white caps
    mask = np.broadcast_to(Y >= horizon, region.shape)
    _fill(img, region, mask, water, WATER)
    _blend(img, caps * mask * 0.8, np.array([0.95, 0.97, 1.0], np.float32))


def _hills(rng, img, region, Y, X, top: float, layers: int, far, near, amplitude: float) -> np.ndarray:
    """Rolling hills from `top` down, far layers paler (aerial perspective). Returns the last ridge (1, S)."""
    ridge = None
    for k in range(layers):
        t = k / max(layers - 1, 1)
        base = top + 0.09 * k
        ridge = base + sum(amplitude * rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * rng.uniform(0.3, 2.0) * X
                                                                         + rng.uniform(0, 2 * np.pi))
                           for _ in range(3)) / 2
        colour = _colour(rng, far, 0.04) * (1 - t) + _colour(rng, near, 0.05) * t
        shade = (0.85 + 0.3 * _noise(rng, img.shape[0], 4, 6))[..., None]  # light patches on the slopes
        _fill(img, region, Y >= ridge, colour * shade, GROUND)
    return ridge


def _trees(rng, img, region, n: int, y_range: tuple[float, float], height: tuple[float, float],
           conifer_share: float, foliage, dark: float = 1.0) -> None:
    """`n` trees standing between heights `y_range`, nearer ones bigger and drawn later (on top).
    Shapes are drawn by PIL into an index image; colours come from a per-tree table."""
    size = img.shape[0]
    ids = Image.new("L", (size, size), 0)  # 0 = no tree; tree i: crown 2i-1, trunk 2i
    draw = ImageDraw.Draw(ids)
    table = np.zeros((2 * n + 1, 3), np.float32)
    for i, base in enumerate(np.sort(rng.uniform(*y_range, n)), start=1):
        near = (base - y_range[0]) / (y_range[1] - y_range[0] + 1e-6)  # 0 far ... 1 near
        h = size * rng.uniform(*height) * (0.55 + 0.9 * near)
        x, y = rng.uniform(-0.05, 1.05) * size, base * size
        w = h * rng.uniform(0.18, 0.3)
        draw.rectangle([x - w * 0.12, y - h * 0.3, x + w * 0.12, y], fill=2 * i)
        if rng.random() < conifer_share:
            draw.polygon([(x, y - h), (x - w, y - h * 0.15), (x + w, y - h * 0.15)], fill=2 * i - 1)
        else:
            draw.ellipse([x - w * 1.5, y - h, x + w * 1.5, y - h * 0.3], fill=2 * i - 1)
        table[2 * i - 1] = _colour(rng, foliage, 0.05) * dark * (0.75 + 0.35 * near)
        table[2 * i] = _colour(rng, (0.3, 0.22, 0.15), 0.03) * dark
    ids = np.asarray(ids)
    leaves = 0.8 + 0.4 * _noise(rng, size, 10, 10)[..., None]  # clumps of foliage, light and dark
    _fill(img, region, ids > 0, table[ids] * leaves, TREE)


def _mountains(rng, img, region, Y, horizon: float, height: float, rock, snow: bool) -> None:
    """A jagged range standing on the horizon, shaded by a fake relief, snow on the high parts."""
    size = img.shape[0]
    ridge = (horizon - height * (0.35 + 0.65 * _profile(rng, size, rng.integers(3, 6))))[None, :]  # (1, S)
    relief = _fractal(rng, size, 5, 5)
    light = 1.0 + 3.0 * np.gradient(relief, axis=1) * size / 8  # slopes facing left are lit
    colour = _colour(rng, rock, 0.05) * np.clip(light, 0.6, 1.4)[..., None]
    mask = (Y >= ridge) & (Y < horizon + 0.02)
    _fill(img, region, mask, colour, ROCK)
    if snow:
        line = ridge.min() + rng.uniform(0.25, 0.5) * (horizon - ridge.min())
        cap = mask & (Y < line + 0.06 * (relief - 0.5))
        _fill(img, region, cap, np.array([0.93, 0.95, 1.0], np.float32) * np.clip(light, 0.75, 1.1)[..., None], ROCK)


# --- Scenes --------------------------------------------------------------------------------------

BLUE_SKY = ((0.22, 0.45, 0.82), (0.5, 0.7, 0.92), (0.78, 0.86, 0.94))
WHITE = (0.97, 0.97, 0.97)


def render_scene(kind: str, rng: np.random.Generator, size: int) -> tuple[Field, np.ndarray]:
    """A landscape of `kind` with a random composition: RGB (S, S, 3) and its region map (S, S) uint8."""
    Y, X = _grid(size)
    region = np.full((size, size), SKY, np.uint8)

    if kind == "sea":
        horizon = rng.uniform(0.35, 0.6)
        img = _sky(rng, Y, X, horizon, BLUE_SKY).copy()
        _clouds(rng, img, Y, horizon, _colour(rng, WHITE, 0.02), rng.uniform(0.1, 0.8))
        if rng.random() < 0.4:
            _sun(img, region, Y, X, rng.uniform(0.1, 0.9), rng.uniform(0.08, horizon - 0.1), 0.05,
                 _colour(rng, (1.0, 0.96, 0.8), 0.02))
        _water(rng, img, region, Y, horizon, _colour(rng, (0.2, 0.45, 0.6)), _colour(rng, (0.05, 0.25, 0.4)),
               waviness=rng.uniform(0.3, 0.6), foam=rng.uniform(0.1, 0.5))
        if rng.random() < 0.5:  # a beach with a wavy edge in the foreground
            edge = rng.uniform(0.78, 0.9) + 0.03 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * X + rng.uniform(0, 6))
            _blend(img, np.exp(-(((Y - edge) / 0.015) ** 2)), np.array([0.95, 0.97, 1.0], np.float32))  # surf
            sand = _colour(rng, (0.86, 0.76, 0.56)) * (0.9 + 0.2 * _noise(rng, size, 8, 8))[..., None]
            _fill(img, region, np.broadcast_to(Y >= edge + 0.015, region.shape), sand, GROUND)

    elif kind == "sunset":
        horizon = rng.uniform(0.45, 0.7)
        img = _sky(rng, Y, X, horizon, ((0.2, 0.15, 0.4), (0.75, 0.35, 0.45), (0.98, 0.6, 0.25),
                                        (1.0, 0.82, 0.45))).copy()
        _clouds(rng, img, Y, horizon, _colour(rng, (0.55, 0.28, 0.4), 0.05), rng.uniform(0.1, 0.6))
        sun_x = rng.uniform(0.2, 0.8)
        _sun(img, region, Y, X, sun_x, horizon - rng.uniform(0.0, 0.08), rng.uniform(0.05, 0.09),
             _colour(rng, (1.0, 0.85, 0.4), 0.03))
        if rng.random() < 0.7:
            _water(rng, img, region, Y, horizon, _colour(rng, (0.7, 0.4, 0.35)), _colour(rng, (0.2, 0.12, 0.25)),
                   waviness=rng.uniform(0.4, 0.8), foam=0.0)
            glitter = np.exp(-(((X - sun_x) / 0.06) ** 2)) * (_noise(rng, size, 24, 4) > 0.55) * (Y > horizon)
            _blend(img, glitter * 0.8, np.array([1.0, 0.85, 0.5], np.float32))  # the sun's path on the water
        else:
            _hills(rng, img, region, Y, X, horizon, 2, (0.35, 0.2, 0.3), (0.12, 0.08, 0.12), 0.04)
            _trees(rng, img, region, rng.integers(2, 8), (horizon + 0.05, 0.95), (0.2, 0.35), 0.5,
                   (0.1, 0.07, 0.1))

    elif kind == "meadow":
        horizon = rng.uniform(0.35, 0.6)
        img = _sky(rng, Y, X, horizon, BLUE_SKY).copy()
        _clouds(rng, img, Y, horizon, _colour(rng, WHITE, 0.02), rng.uniform(0.2, 0.9))
        ridge = _hills(rng, img, region, Y, X, horizon, rng.integers(2, 4), (0.5, 0.65, 0.55),
                       (0.45, 0.68, 0.2), 0.04)
        _trees(rng, img, region, rng.integers(0, 5), (horizon, 0.8), (0.15, 0.3), 0.2, (0.2, 0.4, 0.15))
        # Flowers: sparse dots of colour in the nearest field, denser towards the bottom.
        dots = _noise(rng, size, size // 3, size // 3) + 0.3 * (Y - 1.0)
        petals = np.stack([_colour(rng, c, 0.04) for c in ((0.9, 0.2, 0.2), (0.95, 0.85, 0.2), (0.95, 0.95, 0.95),
                                                            (0.6, 0.35, 0.8))])
        which = (_noise(rng, size, 4, 4) * 3.99).astype(int).clip(0, 3)
        _fill(img, region, (dots > rng.uniform(0.68, 0.8)) & (Y > ridge + 0.04), petals[which], GROUND)

    elif kind == "forest":
        horizon = rng.uniform(0.25, 0.5)
        img = _sky(rng, Y, X, horizon, BLUE_SKY).copy()
        _clouds(rng, img, Y, horizon, _colour(rng, WHITE, 0.02), rng.uniform(0.0, 0.6))
        floor = _colour(rng, (0.3, 0.38, 0.16)) * (0.8 + 0.4 * _fractal(rng, size, 6, 6))[..., None]
        _fill(img, region, np.broadcast_to(Y >= horizon, region.shape), floor, GROUND)
        _trees(rng, img, region, rng.integers(25, 45), (horizon, horizon + 0.06), (0.12, 0.2), 0.7,
               (0.15, 0.3, 0.25))  # the far tree line
        _trees(rng, img, region, rng.integers(6, 16), (horizon + 0.1, 1.0), (0.35, 0.6), rng.uniform(0.2, 0.8),
               (0.12, 0.38, 0.12))

    elif kind == "mountain":
        horizon = rng.uniform(0.5, 0.72)
        img = _sky(rng, Y, X, horizon, BLUE_SKY).copy()
        _clouds(rng, img, Y, horizon, _colour(rng, WHITE, 0.02), rng.uniform(0.0, 0.5))
        _mountains(rng, img, region, Y, horizon, rng.uniform(0.3, 0.45), (0.55, 0.6, 0.72), snow=True)
        _mountains(rng, img, region, Y, horizon, rng.uniform(0.12, 0.25), (0.38, 0.35, 0.32),
                   snow=rng.random() < 0.3)
        if rng.random() < 0.5:
            _water(rng, img, region, Y, horizon, _colour(rng, (0.3, 0.45, 0.55)), _colour(rng, (0.1, 0.25, 0.3)),
                   waviness=rng.uniform(0.05, 0.2), foam=0.0)
        else:
            _hills(rng, img, region, Y, X, horizon, 2, (0.35, 0.5, 0.3), (0.3, 0.5, 0.15), 0.02)
            _trees(rng, img, region, rng.integers(3, 12), (horizon, 1.0), (0.15, 0.3), 0.9, (0.1, 0.3, 0.15))
    else:
        raise ValueError(f"unknown scene kind {kind!r}; choose from {KINDS}")
    return img, region


# --- Domain looks --------------------------------------------------------------------------------

# How much fine texture each region shows in a photo (multiplicative amplitude, by region id).
PHOTO_DETAIL = np.array([0.02, 0.12, 0.3, 0.45, 0.3, 0.0], np.float32)


def photo_look(rng: np.random.Generator, img: Field, region: np.ndarray) -> Field:
    """Camera-like rendering: fine detail, saturated colours, exposure/white balance, vignette, noise."""
    size = img.shape[0]
    Y, X = _grid(size)
    fine = _noise(rng, size, size // 2, size // 2) - 0.5  # grass blades, leaves, ripples
    mid = _noise(rng, size, size // 8, size // 8) - 0.5
    img = img * (1.0 + PHOTO_DETAIL[region] * (fine + 0.6 * mid))[..., None]
    luma = (img @ LUMA)[..., None]
    img = luma + (img - luma) * rng.uniform(1.1, 1.35)  # saturation
    img = 0.5 + (img - 0.5) * rng.uniform(1.05, 1.25)  # contrast
    img = img * rng.uniform(0.85, 1.1) * _colour(rng, (1.0, 1.0, 1.0), 0.04)  # exposure, white balance
    img = img * (1.0 - rng.uniform(0.2, 0.5) * ((X - 0.5) ** 2 + (Y - 0.5) ** 2))[..., None]  # vignette
    return img + rng.normal(0.0, 0.012, img.shape).astype(np.float32)  # sensor noise


CREAM = np.array([0.97, 0.92, 0.8], np.float32)  # the light warm ground paintings are lifted towards
SHADOW_TINT = np.array([0.1, 0.05, 0.3], np.float32)  # impressionist shadows are blue-violet, not black
CANVAS = np.array([0.9, 0.86, 0.76], np.float32)  # primed canvas showing between strokes
# Brush-stroke direction by region: mean angle and spread (radians, 0 = horizontal).
STROKE_ANGLE = np.array([0.0, 0.0, 0.0, np.pi / 2, 0.0, 0.0], np.float32)
STROKE_SPREAD = np.array([0.3, 0.08, 0.45, 0.6, 0.8, np.pi], np.float32)
# Stroke layers, coarse to fine: cell size (fraction of the image), share of cells with a stroke,
# length / width ratio.
STROKE_LAYERS = ((1 / 9, 1.0, 2.6), (1 / 16, 0.85, 3.0), (1 / 26, 0.55, 3.2))


def painting_look(rng: np.random.Generator, img: Field, region: np.ndarray) -> Field:
    """Impressionist rendering: pastel palette, coloured shadows, oriented brush strokes, canvas."""
    size = img.shape[0]
    # No photographic detail: the painter sees soft masses of colour.
    soft = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(size / 80))
    base = np.asarray(soft, np.float32) / 255.0
    luma = (base @ LUMA)[..., None]
    base = luma + (base - luma) * 0.95  # barely muted ...
    base = 0.74 * base + 0.26 * CREAM  # ... but lifted towards a warm light ground: the pastel palette
    base = base + SHADOW_TINT * np.clip(0.5 - luma, 0.0, 1.0)
    out = 0.7 * base + 0.3 * CANVAS  # thin underpainting, where no stroke covers it
    for cell, density, elongation in STROKE_LAYERS:
        if cell * size >= 1.5:  # strokes under 1.5 px would be noise, not strokes
            out = _strokes(rng, out, base, region, cell * size, density, elongation)
    Y, X = _grid(size)
    period = 3.0 / size if size >= 64 else 2.0 / size  # canvas weave, px
    weave = np.sin(2 * np.pi * X / period) * np.sin(2 * np.pi * Y / period)
    grain = _noise(rng, size, size // 2, size // 2) - 0.5
    return out * (1.0 + 0.035 * weave + 0.03 * grain)[..., None]


def _strokes(rng, out: Field, colours: Field, region: np.ndarray, cell: float, density: float,
             elongation: float) -> Field:
    """Lay one layer of elliptical brush strokes on `out`.

    Stroke centres sit on a jittered grid of `cell` px (plus one ring of cells outside the image, so
    the borders are painted too); each stroke takes the colour of `colours` at its centre (with a
    little random variation) and the direction of its region. Strokes are at most `2 * cell` long,
    so a pixel can only be covered by strokes of its own or the 8 neighbouring cells: each pixel
    tests those 9 and shows the one on top (random depth), which overlaps strokes like real paint.
    """
    size = out.shape[0]
    n = int(np.ceil(size / cell)) + 2
    cy = (np.arange(n)[:, None] - 1 + rng.random((n, n))) * cell  # (n, n) stroke centres, px
    cx = (np.arange(n)[None, :] - 1 + rng.random((n, n))) * cell
    iy, ix = np.clip(cy.astype(int), 0, size - 1), np.clip(cx.astype(int), 0, size - 1)
    rid = region[iy, ix]
    angle = STROKE_ANGLE[rid] + STROKE_SPREAD[rid] * rng.standard_normal((n, n))
    cos, sin = np.cos(angle), np.sin(angle)
    half_len = cell * rng.uniform(0.7, 1.0, (n, n))
    half_wid = half_len / elongation * rng.uniform(0.8, 1.25, (n, n))
    paint = colours[iy, ix] * (1.0 + 0.06 * rng.standard_normal((n, n, 1))) + 0.02 * rng.standard_normal((n, n, 3))
    depth = np.where(rng.random((n, n)) < density, rng.random((n, n)), -np.inf)  # -inf: no stroke in this cell
    bristle_phase = rng.uniform(0, 2 * np.pi, n * n)

    # One row per stroke property, one column per stroke (float32, so the per-pixel work is too).
    strokes = np.stack([cy, cx, cos, sin, 1 / half_len, 1 / half_wid, depth]).reshape(7, -1).astype(np.float32)
    py = np.arange(size, dtype=np.float32)[:, None] + 0.5  # (S, 1) pixel centres, px
    px = np.arange(size, dtype=np.float32)[None, :] + 0.5  # (1, S)
    gy, gx = (py // cell).astype(int) + 1, (px // cell).astype(int) + 1  # each pixel's cell in the padded grid

    def local(k: np.ndarray):
        """Each pixel in the frame of its stroke k (S, S): (u along, v across), the stroke's ellipse
        being the unit circle, and the stroke's depth."""
        y0, x0, c, s, inv_len, inv_wid, d = strokes[:, k]  # 7 x (S, S)
        ry, rx = py - y0, px - x0
        return (rx * c + ry * s) * inv_len, (ry * c - rx * s) * inv_wid, d

    top = np.full((size, size), -np.inf, np.float32)  # depth of the stroke on top at each pixel
    top_k = np.zeros((size, size), np.intp)  # its index
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            k = (gy + dy) * n + (gx + dx)  # (S, S): the candidate stroke of each pixel
            u, v, d = local(k)
            d = np.where(u * u + v * v < 1.0, d, -np.inf)
            above = d > top
            top, top_k = np.where(above, d, top), np.where(above, k, top_k)
    top_u, top_v, _ = local(top_k)
    # Bristle streaks along the stroke and thinner paint at its ends.
    shade = 1.0 + 0.07 * np.sin(4.7 * top_v + bristle_phase[top_k]) - 0.06 * top_u**2
    painted = paint.reshape(-1, 3)[top_k] * shade[..., None]
    return np.where(np.isfinite(top)[..., None], painted, out).astype(np.float32)
