"""Shared inputs and independent references for the native kernel tests.

References are written with NumPy/SciPy/OpenCV only, never with `native`, so a kernel bug
cannot hide in both sides of a comparison.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
from scipy import ndimage
from skimage import data

#: Real photographs shipped with scikit-image (RGB unless noted).
PHOTOS = ("astronaut", "coffee", "chelsea", "camera")

#: Awkward shapes: single pixel, single row/column, odd sizes, one wider than a vector block.
EDGE_SHAPES = ((1, 1), (1, 17), (17, 1), (5, 7), (2, 3), (31, 45))


@functools.cache
def photo(name: str) -> np.ndarray:
    """A scikit-image sample photograph as H x W x C uint8 (camera is H x W x 1); read-only."""
    img = getattr(data, name)()
    if img.ndim == 2:
        img = img[:, :, None]
    img = np.ascontiguousarray(img)
    img.setflags(write=False)
    return img


def small_photo(name: str, max_side: int = 160) -> np.ndarray:
    """`photo(name)` downscaled (area averaging) so its longer side is at most `max_side`."""
    img = photo(name)
    h, w = img.shape[:2]
    f = max_side / max(h, w)
    if f >= 1:
        return img
    out = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return out.reshape(out.shape[0], out.shape[1], img.shape[2])


def rgba(img: np.ndarray) -> np.ndarray:
    """`img` (3 channels) with a varying alpha channel appended."""
    h, w = img.shape[:2]
    alpha = (np.arange(h * w, dtype=np.uint32).reshape(h, w) * 7 % 256).astype(np.uint8)
    return np.ascontiguousarray(np.dstack([img, alpha]))


def noise(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


def as_hwc(a: np.ndarray, c: int) -> np.ndarray:
    """OpenCV drops a trailing channel axis of 1; put it back."""
    return a.reshape(a.shape[0], a.shape[1], c)


def gaussian_weights(sigma: float, radius: int) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return k / k.sum()


def default_radius(sigma: float) -> int:
    return max(1, math.ceil(3.0 * sigma))


def gaussian_f64(img: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """Separable Gaussian in float64 with replicate border (SciPy's mode='nearest')."""
    k = gaussian_weights(sigma, radius)
    out = ndimage.correlate1d(img.astype(np.float64), k, axis=0, mode="nearest")
    return ndimage.correlate1d(out, k, axis=1, mode="nearest")


def to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def cv_blur(img: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    k = 2 * radius + 1
    return as_hwc(cv2.GaussianBlur(img, (k, k), sigma, borderType=cv2.BORDER_REPLICATE),
                  img.shape[2])


def richardson_lucy(img: np.ndarray, sigma: float, radius: int, iterations: int,
                    eps: float = 1e-6) -> np.ndarray:
    """Richardson-Lucy with a Gaussian PSF, per channel, in float64 (SciPy correlate1d)."""
    d = img.astype(np.float64)
    u = d.copy()
    for _ in range(iterations):
        ratio = d / np.maximum(gaussian_f64(u, sigma, radius), eps)
        u = u * gaussian_f64(ratio, sigma, radius)
    return to_u8(u)


def sobel_magnitude(img: np.ndarray) -> np.ndarray:
    """OpenCV Sobel (3x3, replicate) per channel; magnitude rounded half up, clamped."""
    f = img.astype(np.float32)
    gx = as_hwc(cv2.Sobel(f, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE), img.shape[2])
    gy = as_hwc(cv2.Sobel(f, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE), img.shape[2])
    m = np.minimum(np.sqrt(gx * gx + gy * gy), np.float32(255))
    out = np.floor(m + np.float32(0.5)).astype(np.uint8)
    if img.shape[2] == 4:
        out[:, :, 3] = img[:, :, 3]
    return out


def classify_measures(img: np.ndarray) -> dict[str, float]:
    """Laplacian variance, mean luma and colourfulness in float64 with NumPy/OpenCV."""
    f = img.astype(np.float64)
    if img.shape[2] == 1:
        y = f[:, :, 0]
    else:
        y = 0.299 * f[:, :, 0] + 0.587 * f[:, :, 1] + 0.114 * f[:, :, 2]
    lap = cv2.Laplacian(y, cv2.CV_64F, ksize=1, borderType=cv2.BORDER_REPLICATE)
    colorfulness = 0.0
    if img.shape[2] >= 3:
        rg = f[:, :, 0] - f[:, :, 1]
        yb = 0.5 * (f[:, :, 0] + f[:, :, 1]) - f[:, :, 2]
        colorfulness = float(np.sqrt(rg.var() + yb.var())
                             + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2))
    return {"laplacian_var": float(lap.var()), "mean_luma": float(y.mean()),
            "colorfulness": colorfulness}
