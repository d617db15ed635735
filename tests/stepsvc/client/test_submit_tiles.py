"""`stepchain submit --tile` and directory submit: tiles padded by the pipeline's halo give the
untiled result byte for byte, every tile is accounted for, retried, or named as failed."""

from __future__ import annotations

import os
import stat
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from step_fixtures import in_process, noisy_image, pipeline

import native
from native.halo import NotTileable, kernel_reach
from stepsvc.cli import main
from stepsvc.client.tiles import PipelineReach, pipeline_reach, plan_tiles

BLUR_SHARPEN = [{"id": 0, "type": "gaussian_blur", "params": {"sigma": 2.0}, "next_step": [1]},
                {"id": 1, "type": "sharpen", "params": {"amount": 1.5}}]

LOCAL_KERNELS = [
    ("identity", {}), ("grayscale", {}), ("brightness", {"factor": 1.3, "contrast": 1.2}),
    ("gaussian_blur", {"sigma": 2.0}), ("sharpen", {"amount": 2.0, "sigma": 1.5}),
    ("edges", {}), ("deblur", {"sigma": 1.0, "iterations": 2}),
    ("resize", {"scale": 2}), ("resize", {"scale": 3, "method": "bicubic"}),
    ("resize", {"scale": 0.5}),
]


def test_the_pipeline_halo_is_the_sum_of_its_kernels_halos_along_the_route() -> None:
    reach = pipeline_reach(pipeline(0, BLUR_SHARPEN))
    # blur sigma 2 reaches ceil(3 * 2) = 6 pixels, sharpen's mask (sigma 1) 3 more
    assert reach == PipelineReach(halo=9, scale=Fraction(1), align=1)


def test_with_branches_the_halo_covers_the_route_that_reaches_furthest() -> None:
    steps = [{"id": 0, "type": "edges", "next_step": [1, 2]},
             {"id": 1, "type": "gaussian_blur", "params": {"radius": 4}},
             {"id": 2, "type": "deblur", "params": {"radius": 2, "iterations": 3}}]
    assert pipeline_reach(pipeline(0, steps)).halo == 1 + 2 * 2 * 3


def test_a_halo_after_an_upscale_is_counted_in_input_pixels() -> None:
    steps = [{"id": 0, "type": "resize", "params": {"scale": 2}, "next_step": [1]},
             {"id": 1, "type": "gaussian_blur", "params": {"radius": 7}}]
    reach = pipeline_reach(pipeline(0, steps))
    assert reach.scale == 2 and reach.halo == 2 + 4  # resize's own 2, then ceil(7 / 2)


def test_a_pipeline_with_classify_is_refused_saying_why() -> None:
    steps = [{"id": 0, "type": "classify", "next_step": [1]}, {"id": 1, "type": "identity"}]
    with pytest.raises(NotTileable, match=r"step 0 \(classify\): classify measures the whole"):
        pipeline_reach(pipeline(0, steps))


@pytest.mark.parametrize("params", [{"scale": 1.5}, {"width": 300}])
def test_resize_by_a_factor_that_is_not_whole_cannot_be_tiled(params: dict[str, Any]) -> None:
    with pytest.raises(NotTileable):
        kernel_reach("resize", params)


def test_tile_cores_cover_the_image_exactly_once() -> None:
    reach = PipelineReach(halo=5, scale=Fraction(1), align=1)
    cover = np.zeros((70, 101), dtype=int)
    tiles = plan_tiles(70, 101, 32, reach)
    for tile in tiles:
        cover[tile.y0:tile.y1, tile.x0:tile.x1] += 1
        assert tile.py0 == max(0, tile.y0 - 5) and tile.px1 == min(101, tile.x1 + 5)
    assert (cover == 1).all() and len(tiles) == 3 * 4


def submit(*args: str | Path) -> int:
    return main(["submit", *map(str, args)])


def test_a_tiled_blur_sharpen_run_equals_the_untiled_run_byte_for_byte(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = noisy_image(150, 203, 3, seed=4)
    np.save(tmp_path / "in.npy", image)
    with in_process() as pipe:
        pipe.add(1, BLUR_SHARPEN)
        entry = pipe.add(0, BLUR_SHARPEN)
        assert submit(tmp_path / "in.npy", "--target", entry.address, "--out",
                      tmp_path / "whole.npy", "--tile", "100000") == 0
        assert submit(tmp_path / "in.npy", "--target", entry.address, "--out",
                      tmp_path / "tiled.npy", "--tile", "40", "--tile-concurrency", "3") == 0
    out = capsys.readouterr().out
    assert "tiles: expected 1, done 1, retried 0, failed 0" in out
    assert "tiles: expected 24, done 24, retried 0, failed 0" in out
    whole, tiled = np.load(tmp_path / "whole.npy"), np.load(tmp_path / "tiled.npy")
    expected = native.sharpen(native.gaussian_blur(image, sigma=2.0), amount=1.5)
    assert np.array_equal(whole, expected)
    assert np.array_equal(tiled, expected)


@pytest.mark.parametrize(("kernel", "params"), LOCAL_KERNELS,
                         ids=[f"{k}-{p}" for k, p in LOCAL_KERNELS])
def test_every_local_kernel_tiled_equals_the_untiled_result(
        tmp_path: Path, kernel: str, params: dict[str, Any]) -> None:
    steps = [{"id": 0, "type": kernel, "params": params}]
    image = noisy_image(96, 130, 3, seed=7)
    np.save(tmp_path / "in.npy", image)
    with in_process() as pipe:
        entry = pipe.add(0, steps)
        assert submit(tmp_path / "in.npy", "--target", entry.address, "--out",
                      tmp_path / "out.npy", "--tile", "32") == 0
    assert np.array_equal(np.load(tmp_path / "out.npy"), native.run(kernel, image, **params))


def test_a_pipeline_with_classify_refuses_tiles_and_says_to_submit_whole(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    steps = [{"id": 0, "type": "classify", "next_step": [1]}, {"id": 1, "type": "identity"}]
    np.save(tmp_path / "in.npy", noisy_image(32, 32))
    with in_process() as pipe:
        pipe.add(1, steps)
        entry = pipe.add(0, steps)
        assert submit(tmp_path / "in.npy", "--target", entry.address, "--out",
                      tmp_path / "out.npy", "--tile", "16") == 2
    err = capsys.readouterr().err
    assert "classify measures the whole image" in err and "without --tile" in err
    assert not (tmp_path / "out.npy").exists()


def test_tiles_refused_for_good_are_named_and_no_output_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    steps = [{"id": 0, "type": "gaussian_blur", "params": {"sigma": 1.0}}]
    np.save(tmp_path / "in.npy", noisy_image(64, 64))
    with in_process() as pipe:
        entry = pipe.add(0, steps, max_pixels=500)  # tiles of 20 + halo 3 on a side: too big
        code = submit(tmp_path / "in.npy", "--target", entry.address, "--out",
                      tmp_path / "out.npy", "--tile", "20", "--retries", "2")
    captured = capsys.readouterr()
    assert code == 1
    assert "tiles: expected 16, done" in captured.out and "failed 0" not in captured.out
    assert "tile 5: RESOURCE_EXHAUSTED" in captured.err
    assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob(".out*"))


def test_a_full_step_makes_tiles_retry_until_every_one_is_done(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    steps = [{"id": 0, "type": "gaussian_blur", "params": {"sigma": 2.0, "passes": 20}}]
    image = noisy_image(120, 120)
    np.save(tmp_path / "in.npy", image)
    with in_process() as pipe:
        # one request at a time and no queue: concurrent tiles get RESOURCE_EXHAUSTED
        entry = pipe.add(0, steps, max_inflight=1, max_queue=0)
        assert submit(tmp_path / "in.npy", "--target", entry.address, "--out",
                      tmp_path / "out.npy", "--tile", "30", "--tile-concurrency", "4",
                      "--retries", "50") == 0
    out = capsys.readouterr().out
    assert "tiles: expected 16, done 16, retried " in out and "failed 0" in out
    assert "retried 0," not in out
    assert np.array_equal(np.load(tmp_path / "out.npy"), native.gaussian_blur(image, sigma=2.0))


def test_a_directory_is_submitted_image_by_image_with_accounting_per_image(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    source = tmp_path / "in"
    source.mkdir()
    images = {f"img{i}.png": noisy_image(40 + i, 50, 3, seed=i) for i in range(3)}
    for name, arr in images.items():
        Image.fromarray(arr).save(source / name)
    with in_process() as pipe:
        pipe.add(1, BLUR_SHARPEN)
        entry = pipe.add(0, BLUR_SHARPEN)
        assert submit(source, "--target", entry.address, "--out", tmp_path / "whole",
                      "--concurrency", "2") == 0
        assert submit(source, "--target", entry.address, "--out", tmp_path / "tiled",
                      "--tile", "16") == 0
    out = capsys.readouterr().out
    assert out.count("images: expected 3, done 3, failed 0") == 2
    assert "img1.png: tiles: expected 1, done 1, retried 0, failed 0" in out
    assert "img1.png: tiles: expected 12, done 12, retried 0, failed 0" in out
    for name, arr in images.items():
        expected = native.sharpen(native.gaussian_blur(arr, sigma=2.0), amount=1.5)
        for folder in ("whole", "tiled"):
            assert np.array_equal(np.asarray(Image.open(tmp_path / folder / name)), expected)


def test_a_npy_image_submitted_whole_goes_through_as_raw_pixels(tmp_path: Path) -> None:
    from PIL import Image

    image = noisy_image(30, 40, 3, seed=5)
    np.save(tmp_path / "in.npy", image)
    with in_process() as pipe:
        pipe.add(1, BLUR_SHARPEN)
        entry = pipe.add(0, BLUR_SHARPEN)
        assert submit(tmp_path / "in.npy", "--target", entry.address, "--out",
                      tmp_path / "out.png") == 0
    expected = native.sharpen(native.gaussian_blur(image, sigma=2.0), amount=1.5)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), expected)


def test_json_with_tiles_or_a_directory_prints_the_accounting_as_one_json_document(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from PIL import Image

    source = tmp_path / "in"
    source.mkdir()
    for i in range(2):
        Image.fromarray(noisy_image(40, 50, 3, seed=i)).save(source / f"img{i}.png")
    with in_process() as pipe:
        pipe.add(1, BLUR_SHARPEN)
        entry = pipe.add(0, BLUR_SHARPEN)
        capsys.readouterr()
        assert submit(source / "img0.png", "--target", entry.address, "--out",
                      tmp_path / "one.png", "--tile", "16", "--json") == 0
        one = json.loads(capsys.readouterr().out)
        assert submit(source, "--target", entry.address, "--out", tmp_path / "dir",
                      "--json") == 0
        many = json.loads(capsys.readouterr().out)
    assert one["ok"] and one["output"] == str(tmp_path / "one.png")
    assert one["tiles"] == {"expected": 12, "done": 12, "retried": 0, "failed": 0}
    assert (many["expected"], many["done"], many["failed"]) == (2, 2, 0)
    assert [Path(e["output"]).name for e in many["images"]] == ["img0.png", "img1.png"]
    assert all(e["tiles"]["done"] == 1 for e in many["images"])


def test_an_image_beyond_one_request_and_the_steps_pixel_limit_goes_through_as_tiles(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = noisy_image(900, 1200, 3, seed=11)  # 1.08 MP, 3.2 MB raw
    np.save(tmp_path / "in.npy", image)
    with in_process() as pipe:
        # each step takes at most 0.25 MP and 1 MiB messages: the image fits neither
        limits = {"max_pixels": 250_000, "max_message_mb": 1}
        pipe.add(1, BLUR_SHARPEN, **limits)
        entry = pipe.add(0, BLUR_SHARPEN, **limits)
        assert submit(tmp_path / "in.npy", "--target", entry.address, "--out",
                      tmp_path / "whole.npy", "--tile", "2000", "--retries", "1") == 1
        assert submit(tmp_path / "in.npy", "--target", entry.address, "--out",
                      tmp_path / "tiled.npy", "--tile", "256") == 0
    captured = capsys.readouterr()
    assert "RESOURCE_EXHAUSTED" in captured.err  # the whole image was refused
    assert "tiles: expected 20, done 20, retried 0, failed 0" in captured.out
    assert not (tmp_path / "whole.npy").exists()
    expected = native.sharpen(native.gaussian_blur(image, sigma=2.0), amount=1.5)
    assert np.array_equal(np.load(tmp_path / "tiled.npy"), expected)


def test_an_image_over_the_pixel_limit_sent_whole_is_refused_with_the_advice_to_tile(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "in.npy", noisy_image(600, 500, 3, seed=2))  # 0.3 MP
    with in_process() as pipe:
        pipe.add(1, BLUR_SHARPEN, max_pixels=250_000)
        entry = pipe.add(0, BLUR_SHARPEN, max_pixels=250_000)
        assert submit(tmp_path / "in.npy", "--target", entry.address, "--out",
                      tmp_path / "out.png") == 1
    err = capsys.readouterr().err
    assert "RESOURCE_EXHAUSTED" in err and "(--max-pixels)" in err
    assert "--tile 2048 sends it as tiles" in err


def test_a_tiled_output_is_written_with_the_users_umask(tmp_path: Path) -> None:
    np.save(tmp_path / "in.npy", noisy_image(90, 120, 3, seed=3))
    old = os.umask(0o022)
    try:
        with in_process() as pipe:
            pipe.add(1, BLUR_SHARPEN)
            entry = pipe.add(0, BLUR_SHARPEN)
            for name in ("out.npy", "out.png"):
                assert submit(tmp_path / "in.npy", "--target", entry.address, "--out",
                              tmp_path / name, "--tile", "64") == 0
    finally:
        os.umask(old)
    # as every other tool writes: 0666 less the umask, not a temporary file's 0600
    assert stat.S_IMODE((tmp_path / "out.npy").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "out.png").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
