"""Each native kernel against an independent reference, on real photographs and edge shapes.

Tolerances (max absolute difference per uint8 sample):
- grayscale: exact vs a NumPy 15-bit reference and vs OpenCV >= 5 (1 vs OpenCV 4's 14-bit one);
- edges, brightness, identity: exact (0);
- gaussian_blur vs OpenCV and vs a float64 SciPy reference: 1 (float rounding at .5);
- sharpen and deblur vs float64 references: 1;
- resize bilinear vs OpenCV and Pillow: 1; bicubic vs OpenCV: 2 (OpenCV uses 11-bit fixed point);
- classify measures vs float64 NumPy/OpenCV: relative 1e-5 (luma is float32 inside the kernel).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest
from native_fixtures import (
    EDGE_SHAPES,
    PHOTOS,
    as_hwc,
    classify_measures,
    cv_blur,
    default_radius,
    gaussian_f64,
    max_diff,
    noise,
    photo,
    rgba,
    richardson_lucy,
    small_photo,
    sobel_magnitude,
    to_u8,
)
from PIL import Image

import native

CHANNELS = (1, 3, 4)


def edge_image(shape: tuple[int, int], c: int) -> np.ndarray:
    return noise(shape[0], shape[1], c, seed=shape[0] * 100 + shape[1] + c)


def views(img: np.ndarray) -> dict[str, np.ndarray]:
    """Non-contiguous views of `img` that every kernel must accept."""
    out = {"strided": img[::2, ::3], "flipped": img[::-1, ::-1]}
    if img.shape[2] == 4:
        out["rgb_of_rgba"] = img[:, :, :3]
    return out


# ---- grayscale ----

#: OpenCV 5 uses 15-bit BT.601 weights (9798, 19235, 3735), the ones the kernel uses; OpenCV 4
#: used 14-bit ones and differs by at most 1 on a few values.
CV_GRAY_TOL = 0 if int(cv2.__version__.split(".")[0]) >= 5 else 1


def gray_ref(img: np.ndarray) -> np.ndarray:
    """BT.601 luma in 15-bit fixed point with round half up, in NumPy."""
    f = img.astype(np.int64)
    return ((f[..., 0] * 9798 + f[..., 1] * 19235 + f[..., 2] * 3735 + (1 << 14)) >> 15).astype(np.uint8)


@pytest.mark.parametrize("name", PHOTOS)
def test_grayscale_is_bit_identical_to_opencv_on_photos(name: str) -> None:
    img = photo(name)
    out = native.grayscale(img)
    assert out.shape == (*img.shape[:2], 1)
    if img.shape[2] == 1:
        assert np.array_equal(out, img)
    else:
        assert np.array_equal(out[:, :, 0], gray_ref(img))
        assert max_diff(out[:, :, 0], cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)) <= CV_GRAY_TOL


def test_grayscale_is_exact_for_every_colour_value() -> None:
    # all 2^24 RGB triples would be 48 MB; every R,G with B on a stride covers each weight
    r, g, b = np.meshgrid(np.arange(256), np.arange(256), np.arange(0, 256, 5), indexing="ij")
    img = np.stack([r, g, b], axis=-1).reshape(256, -1, 3).astype(np.uint8)
    assert np.array_equal(native.grayscale(img)[:, :, 0], gray_ref(img))


def test_grayscale_of_rgba_ignores_alpha_like_opencv() -> None:
    img = rgba(photo("coffee"))
    out = native.grayscale(img)[:, :, 0]
    assert np.array_equal(out, gray_ref(img))
    assert max_diff(out, cv2.cvtColor(img, cv2.COLOR_RGBA2GRAY)) <= CV_GRAY_TOL


@pytest.mark.parametrize("shape", EDGE_SHAPES)
def test_grayscale_matches_opencv_on_edge_shapes(shape: tuple[int, int]) -> None:
    img = edge_image(shape, 3)
    out = native.grayscale(img)[:, :, 0]
    assert np.array_equal(out, gray_ref(img))
    assert max_diff(out, cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).reshape(shape)) <= CV_GRAY_TOL


# ---- gaussian blur ----

@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("sigma", [0.8, 3.0])
def test_gaussian_blur_matches_opencv_replicate_border_on_photos(name: str, sigma: float) -> None:
    img = photo(name)
    out = native.gaussian_blur(img, sigma=sigma)
    assert max_diff(out, cv_blur(img, sigma, default_radius(sigma))) <= 1


def test_gaussian_blur_matches_float64_scipy_reference() -> None:
    img = small_photo("astronaut", 200)
    out = native.gaussian_blur(img, sigma=2.5, radius=5)
    assert max_diff(out, to_u8(gaussian_f64(img, 2.5, 5))) <= 1


def test_gaussian_blur_radius_alone_uses_opencv_sigma_rule() -> None:
    img = small_photo("chelsea")
    # OpenCV: sigma = 0.3 * ((ksize - 1) / 2 - 1) + 0.8 for ksize = 2 * radius + 1
    out = native.gaussian_blur(img, radius=4)
    assert max_diff(out, cv_blur(img, 0.3 * 3 + 0.8, 4)) <= 1


@pytest.mark.parametrize("c", CHANNELS)
@pytest.mark.parametrize("shape", EDGE_SHAPES)
def test_gaussian_blur_matches_opencv_on_edge_shapes(shape: tuple[int, int], c: int) -> None:
    img = edge_image(shape, c)
    assert max_diff(native.gaussian_blur(img, sigma=1.5), cv_blur(img, 1.5, 5)) <= 1


def test_gaussian_blur_radius_larger_than_image_replicates_border() -> None:
    img = edge_image((3, 4), 3)
    assert max_diff(native.gaussian_blur(img, sigma=5.0, radius=20), cv_blur(img, 5.0, 20)) <= 1


def test_gaussian_blur_of_flat_image_is_unchanged() -> None:
    img = np.full((9, 40, 3), 173, np.uint8)
    assert np.array_equal(native.gaussian_blur(img, sigma=4.0), img)


# ---- sharpen ----

@pytest.mark.parametrize("name", PHOTOS)
def test_sharpen_is_unsharp_mask_against_float64_reference(name: str) -> None:
    img = small_photo(name, 200)
    out = native.sharpen(img, amount=1.5, sigma=1.2)
    f = img.astype(np.float64)
    ref = to_u8(f + 1.5 * (f - gaussian_f64(img, 1.2, default_radius(1.2))))
    assert max_diff(out, ref) <= 1


def test_sharpen_with_zero_amount_returns_the_input() -> None:
    img = small_photo("coffee")
    assert np.array_equal(native.sharpen(img, amount=0.0), img)


@pytest.mark.parametrize("c", CHANNELS)
@pytest.mark.parametrize("shape", EDGE_SHAPES)
def test_sharpen_on_edge_shapes(shape: tuple[int, int], c: int) -> None:
    img = edge_image(shape, c)
    f = img.astype(np.float64)
    ref = to_u8(f + 1.0 * (f - gaussian_f64(img, 1.0, 3)))
    assert max_diff(native.sharpen(img), ref) <= 1


# ---- edges ----

@pytest.mark.parametrize("name", PHOTOS)
def test_edges_is_opencv_sobel_magnitude_exactly(name: str) -> None:
    img = photo(name)
    assert np.array_equal(native.edges(img), sobel_magnitude(img))


@pytest.mark.parametrize("c", CHANNELS)
@pytest.mark.parametrize("shape", EDGE_SHAPES)
def test_edges_on_edge_shapes_keeps_alpha(shape: tuple[int, int], c: int) -> None:
    img = edge_image(shape, c)
    out = native.edges(img)
    assert np.array_equal(out, sobel_magnitude(img))
    if c == 4:
        assert np.array_equal(out[:, :, 3], img[:, :, 3])


def test_edges_of_flat_image_is_zero() -> None:
    assert not native.edges(np.full((8, 8, 3), 99, np.uint8)).any()


# ---- brightness ----

def brightness_ref(img: np.ndarray, factor: float, contrast: float) -> np.ndarray:
    o = (img.astype(np.float64) * factor - 128.0) * contrast + 128.0
    out = np.floor(np.clip(o, 0, 255) + 0.5).astype(np.uint8)
    if img.shape[2] == 4:
        out[:, :, 3] = img[:, :, 3]
    return out


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize(("factor", "contrast"), [(1.2, 1.0), (0.5, 1.7), (3.0, 0.25)])
def test_brightness_matches_numpy_formula(name: str, factor: float, contrast: float) -> None:
    img = photo(name)
    out = native.brightness(img, factor=factor, contrast=contrast)
    assert np.array_equal(out, brightness_ref(img, factor, contrast))


@pytest.mark.parametrize("c", CHANNELS)
def test_brightness_keeps_alpha_on_edge_shapes(c: int) -> None:
    for shape in EDGE_SHAPES:
        img = edge_image(shape, c)
        assert np.array_equal(native.brightness(img, factor=1.4), brightness_ref(img, 1.4, 1.0))


# ---- resize ----

CV_METHODS = {"bilinear": (cv2.INTER_LINEAR, 1), "bicubic": (cv2.INTER_CUBIC, 2)}


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("method", sorted(CV_METHODS))
@pytest.mark.parametrize("size", [(301, 517), (1000, 733), (64, 64)])
def test_resize_matches_opencv(name: str, method: str, size: tuple[int, int]) -> None:
    img = photo(name)
    h, w = size
    out = native.resize(img, width=w, height=h, method=method)
    flag, tol = CV_METHODS[method]
    ref = as_hwc(cv2.resize(img, (w, h), interpolation=flag), img.shape[2])
    assert out.shape == (h, w, img.shape[2])
    assert max_diff(out, ref) <= tol


def test_resize_bilinear_upscale_matches_pillow() -> None:
    img = photo("chelsea")
    out = native.resize(img, width=902, height=600, method="bilinear")
    ref = np.asarray(Image.fromarray(img).resize((902, 600), Image.Resampling.BILINEAR))
    assert max_diff(out, ref) <= 1


def test_resize_scale_and_single_side_keep_aspect() -> None:
    img = photo("coffee")  # 400 x 600
    assert native.resize(img, scale=0.5).shape == (200, 300, 3)
    assert native.resize(img, width=300).shape == (200, 300, 3)
    assert native.resize(img, height=800).shape == (800, 1200, 3)
    assert native.resize(img).shape == (800, 1200, 3)  # default scale 2


@pytest.mark.parametrize("method", sorted(CV_METHODS))
@pytest.mark.parametrize("c", CHANNELS)
@pytest.mark.parametrize("shape", EDGE_SHAPES)
def test_resize_on_edge_shapes(shape: tuple[int, int], c: int, method: str) -> None:
    img = edge_image(shape, c)
    flag, tol = CV_METHODS[method]
    for oh, ow in ((3 * shape[0], 2 * shape[1] + 1), (1, 1), (max(1, shape[0] // 2), 5)):
        out = native.resize(img, width=ow, height=oh, method=method)
        ref = as_hwc(cv2.resize(img, (ow, oh), interpolation=flag), c)
        assert max_diff(out, ref) <= tol, (oh, ow)


def test_resize_to_same_size_is_identity() -> None:
    img = photo("astronaut")
    for method in CV_METHODS:
        assert np.array_equal(native.resize(img, scale=1.0, method=method), img)


# ---- deblur ----

@pytest.mark.parametrize("name", PHOTOS)
def test_deblur_matches_scipy_richardson_lucy(name: str) -> None:
    img = small_photo(name, 96)
    out = native.deblur(img, sigma=1.5, iterations=8)
    assert max_diff(out, richardson_lucy(img, 1.5, default_radius(1.5), 8)) <= 1


def test_deblur_sharpens_a_blurred_photo() -> None:
    sharp = small_photo("astronaut", 128)
    blurred = native.gaussian_blur(sharp, sigma=1.5)
    restored = native.deblur(blurred, sigma=1.5, iterations=15)
    err_blurred = np.abs(blurred.astype(float) - sharp).mean()
    err_restored = np.abs(restored.astype(float) - sharp).mean()
    assert err_restored < 0.85 * err_blurred


@pytest.mark.parametrize("c", CHANNELS)
@pytest.mark.parametrize("shape", EDGE_SHAPES)
def test_deblur_on_edge_shapes(shape: tuple[int, int], c: int) -> None:
    img = edge_image(shape, c)
    assert max_diff(native.deblur(img, sigma=1.0, iterations=3),
                    richardson_lucy(img, 1.0, 3, 3)) <= 1


def test_deblur_keeps_black_pixels_black() -> None:
    img = np.zeros((6, 9, 3), np.uint8)
    img[2, 3] = 200
    out = native.deblur(img, sigma=1.0, iterations=5)
    assert out[5, 8].tolist() == [0, 0, 0]


# ---- classify ----

@pytest.mark.parametrize("name", PHOTOS)
def test_classify_measures_match_numpy_reference(name: str) -> None:
    img = photo(name)
    got = native.classify(img)["measures"]
    ref = classify_measures(img)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("c", CHANNELS)
@pytest.mark.parametrize("shape", EDGE_SHAPES)
def test_classify_measures_on_edge_shapes(shape: tuple[int, int], c: int) -> None:
    img = edge_image(shape, c)
    got = native.classify(img)["measures"]
    for key, value in classify_measures(img).items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-4), key


def test_classify_labels_photos() -> None:
    astronaut = photo("astronaut")
    labels = native.classify(astronaut)["labels"]
    assert labels == {"sharpness": "sharp", "exposure": "normal", "color": "color"}
    assert native.classify(photo("camera"))["labels"]["color"] == "grayscale"
    blurred = native.gaussian_blur(astronaut, sigma=4.0)
    assert native.classify(blurred)["labels"]["sharpness"] == "blurry"
    dark = native.brightness(astronaut, factor=0.3)
    assert native.classify(dark)["labels"]["exposure"] == "dark"
    bright = native.brightness(astronaut, factor=8.0)
    assert native.classify(bright)["labels"]["exposure"] == "bright"


def test_classify_thresholds_move_the_labels() -> None:
    img = photo("coffee")
    m = native.classify(img)["measures"]
    high = native.classify(img, blur_threshold=m["laplacian_var"] + 1,
                           color_threshold=m["colorfulness"] + 1)
    assert high["labels"]["sharpness"] == "blurry"
    assert high["labels"]["color"] == "grayscale"
    assert native.classify(img, dark_threshold=m["mean_luma"] + 1,
                           bright_threshold=250)["labels"]["exposure"] == "dark"


def test_classify_does_not_modify_the_image() -> None:
    img = np.array(photo("chelsea"))
    before = img.copy()
    native.classify(img)
    assert np.array_equal(img, before)


# ---- identity and input forms ----

@pytest.mark.parametrize("c", CHANNELS)
def test_identity_returns_an_equal_copy(c: int) -> None:
    img = edge_image((31, 45), c)
    out = native.identity(img)
    assert np.array_equal(out, img)
    assert not np.shares_memory(out, img)


def test_two_dimensional_input_is_one_channel() -> None:
    img = photo("camera")[:, :, 0]
    assert native.identity(img).shape == (*img.shape, 1)
    assert np.array_equal(native.edges(img), sobel_magnitude(img[:, :, None]))


KERNEL_CALLS: dict[str, dict[str, Any]] = {
    "identity": {},
    "grayscale": {},
    "gaussian_blur": {"sigma": 2.0},
    "sharpen": {"amount": 1.0},
    "edges": {},
    "brightness": {"factor": 1.3},
    "resize": {"scale": 1.5, "method": "bicubic"},
    "deblur": {"iterations": 3},
}


@pytest.mark.parametrize("kernel", sorted(KERNEL_CALLS))
def test_non_contiguous_views_give_the_same_result_as_copies(kernel: str) -> None:
    img = rgba(small_photo("astronaut", 64))
    for label, view in views(img).items():
        assert not view.flags.c_contiguous
        got = native.run(kernel, view, **KERNEL_CALLS[kernel])
        want = native.run(kernel, np.ascontiguousarray(view), **KERNEL_CALLS[kernel])
        assert np.array_equal(got, want), label
    measures = native.classify(img[::2, ::3])["measures"]
    assert measures == native.classify(np.ascontiguousarray(img[::2, ::3]))["measures"]


def test_views_are_not_modified_and_outputs_are_new_arrays() -> None:
    img = np.array(small_photo("coffee", 64))
    before = img.copy()
    for kernel, params in KERNEL_CALLS.items():
        out = native.run(kernel, img[::-1], **params)
        assert not np.shares_memory(out, img)
    assert np.array_equal(img, before)
