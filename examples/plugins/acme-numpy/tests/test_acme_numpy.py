"""acme.sepia and acme.contrast, called directly and through stepchain's registry."""

from __future__ import annotations

import numpy as np
import pytest

import native

acme_numpy = pytest.importorskip("acme_numpy", reason="the example plugins are not installed in this venv: run `make venv`")
CONTRAST, SEPIA, SEPIA_MATRIX = acme_numpy.CONTRAST, acme_numpy.SEPIA, acme_numpy.SEPIA_MATRIX
RNG = np.random.default_rng(7)
IMG = RNG.integers(0, 256, (23, 31, 3), dtype=np.uint8)


def reference_sepia(img: np.ndarray, strength: float) -> np.ndarray:
    rgb = img[:, :, :3].astype(np.float64)
    toned = np.einsum("hwc,oc->hwo", rgb, SEPIA_MATRIX.astype(np.float64))
    return np.clip(np.floor((1 - strength) * rgb + strength * toned + 0.5), 0, 255)


@pytest.mark.parametrize("strength", [0.0, 0.4, 1.0])
def test_sepia_matches_the_matrix_within_rounding(strength: float) -> None:
    out = native.run("acme.sepia", IMG, strength=strength)
    assert out.dtype == np.uint8 and out.shape == IMG.shape
    assert np.abs(out.astype(int) - reference_sepia(IMG, strength)).max() <= 1


def test_sepia_keeps_alpha_and_grey_images() -> None:
    rgba = np.dstack([IMG, np.arange(23 * 31, dtype=np.uint8).reshape(23, 31)])
    assert (native.run("acme.sepia", rgba)[:, :, 3] == rgba[:, :, 3]).all()
    grey = IMG[:, :, :1].copy()
    assert (native.run("acme.sepia", grey) == grey).all()


def test_sepia_tiles_with_no_halo() -> None:
    from native.halo import kernel_reach
    assert kernel_reach("acme.sepia").halo == 0


def test_contrast_labels_a_flat_image_flat_and_a_noisy_one_normal() -> None:
    flat = np.full((16, 16, 3), 120, np.uint8)
    assert native.run("acme.contrast", flat)["labels"] == {"contrast": "flat"}
    result = native.run("acme.contrast", IMG)
    assert result["labels"] == {"contrast": "normal"} and result["measures"]["luma_std"] > 40


def test_the_registry_lists_both_kernels_from_this_package() -> None:
    entries = {e.spec.name: e for e in native.entries()}
    for spec in (SEPIA, CONTRAST):
        assert entries[spec.name].package == "acme-numpy-kernels"
    assert native.output_kind("acme.contrast") == "measure"


def test_parameters_are_validated_like_a_built_ins() -> None:
    with pytest.raises(ValueError, match=r"acme.sepia.strength must be <= 1, got 2"):
        native.run("acme.sepia", IMG, strength=2)
