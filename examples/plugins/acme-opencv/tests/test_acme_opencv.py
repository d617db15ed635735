"""acme.clahe and acme.denoise, called directly and through stepchain's registry."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import native
from native.halo import kernel_reach

pytest.importorskip("acme_opencv", reason="the example plugins are not installed in this venv: run `make venv`")
RNG = np.random.default_rng(11)


def low_contrast(h: int = 64, w: int = 80) -> np.ndarray:
    ramp = np.linspace(118, 130, w, dtype=np.float32)[None, :].repeat(h, 0)
    rgb = np.dstack([ramp, ramp * 0.9, ramp * 0.8]) + RNG.normal(0, 2, (h, w, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def test_clahe_stretches_lightness_and_keeps_alpha() -> None:
    img = low_contrast()
    out = native.run("acme.clahe", img, clip_limit=4.0)
    lum = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)[:, :, 0]
    lum_out = cv2.cvtColor(out, cv2.COLOR_RGB2LAB)[:, :, 0]
    assert lum_out.std() > 1.5 * lum.std()
    rgba = np.dstack([img, np.full(img.shape[:2], 77, np.uint8)])
    out4 = native.run("acme.clahe", rgba, clip_limit=4.0)
    assert (out4[:, :, 3] == 77).all() and (out4[:, :, :3] == out).all()


def test_clahe_on_grey_is_opencvs_clahe() -> None:
    grey = low_contrast()[:, :, :1].copy()
    expected = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(grey[:, :, 0])
    assert (native.run("acme.clahe", grey)[:, :, 0] == expected).all()


def test_clahe_is_refused_for_tiles_with_its_reason() -> None:
    with pytest.raises(native.NotTileable, match="grid laid over the whole image"):
        kernel_reach("acme.clahe")


def test_denoise_flattens_noise_but_keeps_a_step_edge() -> None:
    img = np.zeros((40, 40, 3), np.uint8)
    img[:, 20:] = 200
    noisy = np.clip(img + RNG.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    out = native.run("acme.denoise", noisy, radius=3, sigma_color=40)
    assert out[:, 24:36].std() < noisy[:, 24:36].std() / 2
    assert out[:, :18].mean() < 20 and out[:, 22:].mean() > 180


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_denoise_of_a_tile_padded_by_its_halo_equals_the_untiled_centre(channels: int) -> None:
    img = RNG.integers(0, 256, (50, 60, channels), dtype=np.uint8)
    halo = kernel_reach("acme.denoise", {"radius": 4}).halo
    full = native.run("acme.denoise", img, radius=4)
    y0, y1, x0, x1 = 10, 30, 15, 45
    tile = img[y0 - halo:y1 + halo, x0 - halo:x1 + halo]
    out = native.run("acme.denoise", tile, radius=4)
    assert (out[halo:-halo, halo:-halo] == full[y0:y1, x0:x1]).all()


def test_the_alias_and_package_are_registered() -> None:
    e = {x.spec.name: x for x in native.entries()}["acme.denoise"]
    assert e.package == "acme-opencv-kernels"
    assert native.canonical_name("acme.bilateral") == "acme.denoise"
