"""``stepchain bench kernels``: what each kernel is timed against (OpenCV, Pillow).

A :class:`Case` is one native kernel call with the nearest OpenCV and Pillow operations; the
benchmark (:mod:`bench.kernels`) times each at every thread count. Not a benchmark of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import native

Fn = Callable[[], Any]


@dataclass(frozen=True)
class Case:
    """One kernel call and its nearest OpenCV / Pillow equivalents (None: there is none)."""

    kernel: str
    params: dict[str, Any]
    opencv_op: str | None
    pillow_op: str | None
    build: Callable[[np.ndarray, Any, int], tuple[Fn, Fn | None, Fn | None]] = field(repr=False)


def cases() -> list[Case]:
    """The benchmarked calls. Imports OpenCV and Pillow lazily (test-only dependencies)."""
    import cv2
    from PIL import Image, ImageEnhance, ImageFilter

    def identity(img: np.ndarray, pil: Image.Image, t: int) -> tuple[Fn, Fn | None, Fn | None]:
        return (lambda: native.identity(img, threads=t), None, pil.copy)

    def grayscale(img: np.ndarray, pil: Image.Image, t: int) -> tuple[Fn, Fn | None, Fn | None]:
        return (lambda: native.grayscale(img, threads=t),
                lambda: cv2.cvtColor(img, cv2.COLOR_RGB2GRAY),
                lambda: pil.convert("L"))

    def blur(img: np.ndarray, pil: Image.Image, t: int) -> tuple[Fn, Fn | None, Fn | None]:
        return (lambda: native.gaussian_blur(img, sigma=3.0, threads=t),
                lambda: cv2.GaussianBlur(img, (19, 19), 3.0, borderType=cv2.BORDER_REPLICATE),
                lambda: pil.filter(ImageFilter.GaussianBlur(radius=3)))

    def sharpen(img: np.ndarray, pil: Image.Image, t: int) -> tuple[Fn, Fn | None, Fn | None]:
        def cv_sharpen() -> np.ndarray:
            soft = cv2.GaussianBlur(img, (7, 7), 1.0, borderType=cv2.BORDER_REPLICATE)
            return cv2.addWeighted(img, 2.0, soft, -1.0, 0.0)
        return (lambda: native.sharpen(img, amount=1.0, sigma=1.0, threads=t), cv_sharpen,
                lambda: pil.filter(ImageFilter.UnsharpMask(radius=1, percent=100, threshold=0)))

    def edges(img: np.ndarray, pil: Image.Image, t: int) -> tuple[Fn, Fn | None, Fn | None]:
        def cv_edges() -> np.ndarray:
            gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
            gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
            return cv2.convertScaleAbs(cv2.magnitude(gx, gy))
        return (lambda: native.edges(img, threads=t), cv_edges,
                lambda: pil.filter(ImageFilter.FIND_EDGES))

    def brightness(img: np.ndarray, pil: Image.Image, t: int) -> tuple[Fn, Fn | None, Fn | None]:
        return (lambda: native.brightness(img, factor=1.2, threads=t),
                lambda: cv2.convertScaleAbs(img, alpha=1.2, beta=0.0),
                lambda: ImageEnhance.Brightness(pil).enhance(1.2))

    def resize(method: str) -> Callable[[np.ndarray, Any, int], tuple[Fn, Fn | None, Fn | None]]:
        flag = cv2.INTER_LINEAR if method == "bilinear" else cv2.INTER_CUBIC
        resample = Image.Resampling.BILINEAR if method == "bilinear" else Image.Resampling.BICUBIC

        def build(img: np.ndarray, pil: Image.Image, t: int) -> tuple[Fn, Fn | None, Fn | None]:
            h, w = img.shape[:2]
            return (lambda: native.resize(img, scale=2.0, method=method, threads=t),
                    lambda: cv2.resize(img, (2 * w, 2 * h), interpolation=flag),
                    lambda: pil.resize((2 * w, 2 * h), resample))
        return build

    def deblur(img: np.ndarray, pil: Image.Image, t: int) -> tuple[Fn, Fn | None, Fn | None]:
        return (lambda: native.deblur(img, sigma=1.5, iterations=5, threads=t), None, None)

    def classify(img: np.ndarray, pil: Image.Image, t: int) -> tuple[Fn, Fn | None, Fn | None]:
        def cv_classify() -> Any:
            gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
            return cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_32F, ksize=1)), cv2.mean(gray)
        return (lambda: native.classify(img, threads=t), cv_classify, None)

    return [
        Case("identity", {}, None, "Image.copy", identity),
        Case("grayscale", {}, "cvtColor(RGB2GRAY)", "convert('L')", grayscale),
        Case("gaussian_blur", {"sigma": 3.0}, "GaussianBlur(19x19, 3, REPLICATE)",
             "GaussianBlur(radius=3)", blur),
        Case("sharpen", {"amount": 1.0, "sigma": 1.0}, "GaussianBlur + addWeighted",
             "UnsharpMask(1, 100%)", sharpen),
        Case("edges", {}, "2x Sobel + magnitude + convertScaleAbs", "FIND_EDGES (3x3)", edges),
        Case("brightness", {"factor": 1.2}, "convertScaleAbs(alpha=1.2)",
             "ImageEnhance.Brightness", brightness),
        Case("resize", {"scale": 2.0, "method": "bilinear"}, "resize(INTER_LINEAR)",
             "resize(BILINEAR)", resize("bilinear")),
        Case("resize", {"scale": 2.0, "method": "bicubic"}, "resize(INTER_CUBIC)",
             "resize(BICUBIC)", resize("bicubic")),
        Case("deblur", {"sigma": 1.5, "iterations": 5}, None, None, deblur),
        Case("classify", {}, "gray + Laplacian + meanStdDev (no colourfulness)", None, classify),
    ]


def case_label(case: Case) -> str:
    """Short row label: the kernel, plus the method for resize."""
    return f"resize ({case.params['method']})" if case.kernel == "resize" else case.kernel


def test_image(width: int, height: int) -> np.ndarray:
    """A real photograph (scikit-image's astronaut) resized to width x height, RGB."""
    import cv2
    from skimage import data

    return np.ascontiguousarray(
        cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_CUBIC))
