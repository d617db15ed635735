"""Bad input never crashes: every kernel raises ValueError naming the problem and what is allowed."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

import native
from native.builtins import BUILTINS
from native.registry import canonical_name, params_json_schema, validate_params

IMG = np.zeros((8, 9, 3), np.uint8)
IMAGE_KERNELS = sorted(BUILTINS)


def raises(match: str) -> Any:
    return pytest.raises(ValueError, match=re.escape(match))


@pytest.mark.parametrize("kernel", IMAGE_KERNELS)
@pytest.mark.parametrize(("bad", "message"), [
    (np.zeros((8, 9, 3), np.float32), "image must have dtype uint8, got float32"),
    (np.zeros((8, 9, 3), np.uint16), "image must have dtype uint8, got uint16"),
    (np.zeros((8, 9, 3), bool), "image must have dtype uint8, got bool"),
    (np.zeros(27, np.uint8), "image must be H x W x C (2 or 3 dimensions), got 1 dimensions"),
    (np.zeros((2, 8, 9, 3), np.uint8), "got 4 dimensions"),
    (np.zeros((8, 9, 2), np.uint8), "image must have 1, 3 or 4 channels, got 2"),
    (np.zeros((8, 9, 5), np.uint8), "image must have 1, 3 or 4 channels, got 5"),
    (np.zeros((0, 9, 3), np.uint8), "image is empty (0x9); width and height must be >= 1"),
    (np.zeros((8, 0), np.uint8), "image is empty (8x0)"),
    ([[1, 2], [3, 4]], "image must be a numpy.ndarray, got list"),
])
def test_bad_images_are_rejected_by_every_kernel(kernel: str, bad: Any, message: str) -> None:
    with raises(message):
        native.run(kernel, bad)


@pytest.mark.parametrize("kernel", IMAGE_KERNELS)
def test_absurdly_large_images_are_rejected_before_any_allocation(kernel: str) -> None:
    # zero strides: a 70000-row "image" that occupies 3 bytes, so only the size check can stop it
    tall = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (70_000, 10, 3))
    with raises("image is 10x70000 = 700000 pixels; the limit is 65536 per side"):
        native.run(kernel, tall)
    huge = np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (20_000, 20_000, 1))
    with raises("the limit is 65536 per side and 268435456 pixels"):
        native.run(kernel, huge)


def test_resize_output_over_the_limit_is_rejected() -> None:
    with raises("resize output is 65536x65536 = 4294967296 pixels"):
        native.resize(IMG, width=65536, height=65536)
    with raises("resize.scale must be <= 16"):
        native.resize(IMG, scale=17.0)


@pytest.mark.parametrize(("kernel", "params", "message"), [
    ("gaussian_blur", {"sigma": -1.0}, "gaussian_blur.sigma must be > 0, got -1.0"),
    ("gaussian_blur", {"sigma": 0}, "gaussian_blur.sigma must be > 0, got 0.0"),
    ("gaussian_blur", {"sigma": float("nan")}, "gaussian_blur.sigma must be a finite number, got nan"),
    ("gaussian_blur", {"sigma": float("inf")}, "gaussian_blur.sigma must be a finite number, got inf"),
    ("gaussian_blur", {"sigma": 101.0}, "gaussian_blur.sigma must be <= 100, got 101.0"),
    ("gaussian_blur", {"radius": 0}, "gaussian_blur.radius must be >= 1, got 0"),
    ("gaussian_blur", {"radius": 301}, "gaussian_blur.radius must be <= 300, got 301"),
    ("gaussian_blur", {"radius": 2.5}, "gaussian_blur.radius must be an integer, got 2.5"),
    ("gaussian_blur", {"sigma": True}, "gaussian_blur.sigma must be a number, got bool True"),
    ("gaussian_blur", {"sigma": "3"}, "gaussian_blur.sigma must be a number, got str '3'"),
    ("sharpen", {"amount": -0.5}, "sharpen.amount must be >= 0, got -0.5"),
    ("sharpen", {"amount": 21.0}, "sharpen.amount must be <= 20, got 21.0"),
    ("sharpen", {"sigma": -2.0}, "sharpen.sigma must be > 0, got -2.0"),
    ("brightness", {"factor": 100}, "brightness.factor must be <= 16, got 100.0"),
    ("brightness", {"contrast": -1}, "brightness.contrast must be >= 0, got -1.0"),
    ("brightness", {"factor": False}, "brightness.factor must be a number, got bool False"),
    ("deblur", {"iterations": 0}, "deblur.iterations must be >= 1, got 0"),
    ("deblur", {"iterations": 501}, "deblur.iterations must be <= 500, got 501"),
    ("deblur", {"sigma": float("nan")}, "deblur.sigma must be a finite number, got nan"),
    ("resize", {"method": "nearest"}, "resize.method must be one of bilinear, bicubic; got 'nearest'"),
    ("resize", {"scale": 0}, "resize.scale must be > 0, got 0.0"),
    ("resize", {"width": 0}, "resize.width must be >= 1, got 0"),
    ("resize", {"scale": 2.0, "width": 10}, "resize takes either scale or width/height, not both"),
    ("classify", {"dark_threshold": 200, "bright_threshold": 100},
     "classify.dark_threshold must be below classify.bright_threshold"),
    ("classify", {"blur_threshold": -1}, "classify.blur_threshold must be >= 0, got -1.0"),
    ("edges", {"threads": 0}, "edges.threads must be >= 1, got 0"),
    ("edges", {"threads": 257}, "edges.threads must be <= 256, got 257"),
    ("edges", {"threads": True}, "edges.threads must be a number, got bool True"),
    ("edges", {"passes": 0}, "edges.passes must be >= 1, got 0"),
    ("edges", {"schedule": "fast"}, "edges.schedule must be one of static, dynamic, guided, optionally with a chunk size "
     "('dynamic,16'); got 'fast'"),
    ("edges", {"schedule": 1}, "edges.schedule must be a string, got int"),
])
def test_out_of_range_and_mistyped_params_are_rejected(kernel: str, params: dict[str, Any],
                                                       message: str) -> None:
    with raises(message):
        native.run(kernel, IMG, **params)
    with raises(message):
        validate_params(kernel, params)


def test_unknown_params_name_the_allowed_ones() -> None:
    with raises("gaussian_blur does not take parameter(s) amount, sigmaa; allowed: chunk, "
                "passes, radius, schedule, sigma, threads"):
        native.gaussian_blur(IMG, sigmaa=2.0, amount=1.0)
    with raises("identity does not take parameter(s) sigma; allowed: chunk, passes, schedule, threads"):
        native.identity(IMG, sigma=1.0)


def test_exec_params_can_be_excluded_for_pipeline_json() -> None:
    with raises("edges does not take parameter(s) threads; allowed: none"):
        validate_params("edges", {"threads": 2}, allow_exec=False)


def test_unknown_kernel_names_list_the_installed_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown kernel type 'posterize'; installed types: "
                                         r"(.*, )?blur, brightness, classifier, classify, "
                                         r"deblur, detection"):
        native.run("posterize", IMG)
    with raises("kernel type must be a string, got int"):
        canonical_name(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(("alias", "canonical"), [
    ("blur", "gaussian_blur"), ("upscaling", "resize"), ("classifier", "classify"),
    ("detection", "classify"), ("Gaussian_Blur", "gaussian_blur"), (" edges ", "edges"),
])
def test_aliases_resolve_to_canonical_kernels(alias: str, canonical: str) -> None:
    assert canonical_name(alias) == canonical


def test_run_dispatches_by_alias() -> None:
    img = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(native.run("blur", img, sigma=1.0), native.gaussian_blur(img, sigma=1.0))
    assert native.run("upscaling", img, scale=2).shape == (40, 60, 3)
    assert native.run("detection", img) == native.classify(img)
    assert native.run("classifier", img)["labels"].keys() == {"sharpness", "exposure", "color"}


def test_validate_params_fills_defaults() -> None:
    assert validate_params("deblur", {}) == {"sigma": 1.5, "iterations": 10, "schedule": "static",
                                            "passes": 1}
    assert validate_params("blur", {"sigma": 2}) == {"sigma": 2.0, "schedule": "static",
                                                     "passes": 1}
    assert validate_params("resize", {"width": 5.0})["width"] == 5


def test_params_json_schema_states_types_ranges_and_defaults() -> None:
    schema = params_json_schema("deblur")
    assert schema["additionalProperties"] is False
    assert schema["properties"]["iterations"] == {
        "description": "Richardson-Lucy iterations", "type": "integer", "minimum": 1,
        "maximum": 500, "default": 10}
    assert schema["properties"]["sigma"]["exclusiveMinimum"] == 0.0
    pattern = schema["properties"]["schedule"]["pattern"]
    assert all(re.fullmatch(pattern, s) for s in ("static", "dynamic", "guided", "dynamic,16"))
    assert not any(re.fullmatch(pattern, s) for s in ("fast", "dynamic,", "dynamic,x", "16"))
    assert schema["properties"]["chunk"]["minimum"] == 1


@pytest.mark.parametrize(("params", "message"), [
    ({"sigma": 10**400}, "gaussian_blur.sigma is out of range, got 1000000000"),
    ({"radius": -(10**400)}, "gaussian_blur.radius is out of range"),
    ({"sigma": np.bool_(True)}, "gaussian_blur.sigma must be a number, got bool"),
])
def test_hostile_numbers_are_value_errors_with_a_short_message(params: dict[str, Any],
                                                               message: str) -> None:
    with raises(message) as info:
        native.gaussian_blur(IMG, **params)
    assert len(str(info.value)) < 120


def test_numpy_scalars_are_accepted_like_python_numbers() -> None:
    img = np.arange(8 * 9 * 3, dtype=np.uint8).reshape(8, 9, 3)
    np.testing.assert_array_equal(native.gaussian_blur(img, sigma=np.float32(1.5)),
                                  native.gaussian_blur(img, sigma=1.5))
    assert native.resize(img, width=np.int64(18)).shape == (16, 18, 3)


@pytest.mark.parametrize("kernel", ["gaussian_blur", "sharpen", "deblur"])
def test_a_vanishing_sigma_is_the_identity_not_a_black_image(kernel: str) -> None:
    img = np.arange(8 * 9 * 3, dtype=np.uint8).reshape(8, 9, 3)
    np.testing.assert_array_equal(native.run(kernel, img, sigma=1e-300, radius=2), img)
