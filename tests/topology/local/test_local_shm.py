"""The embedded default (the local backend, `make demo`) passes frames through shared memory
with no flag, and leaves nothing in /dev/shm once the pipeline is deleted."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np
import pytest
from skimage import data
from topology_fixtures import api_client

import native
from stepsvc.client import call as step_client
from stepsvc.frames import codec
from stepsvc.frames.shm import DEFAULT_DIR
from topology.local.backend import LocalBackend
from topology.service.app import create_app
from topology.service.settings import Settings


def _segments(prefix: str) -> list[str]:
    return [n for n in os.listdir(DEFAULT_DIR) if n.startswith(prefix)]


@pytest.mark.slow
def test_local_backend_steps_share_frames_through_dev_shm_without_a_flag(
        tmp_path: Path) -> None:
    name = f"shmlocal-{secrets.token_hex(3)}"
    pipeline = {"name": name, "steps": [{"type": "gaussian_blur", "params": {"sigma": 1.5}},
                                        {"type": "sharpen"}, {"type": "edges"}]}
    app = create_app(Settings(state_dir=tmp_path), LocalBackend(tmp_path))
    photo = data.astronaut()
    expected = native.edges(native.sharpen(native.gaussian_blur(photo, sigma=1.5)))
    with api_client(app) as api:
        created = api.post("/pipeline", json=pipeline)
        assert created.status_code == 201, created.text
        entry = created.json()["entrypoint"]
        request = step_client.build_request(codec.raw_image(photo))
        with step_client.connect(entry) as channel:
            result = step_client.submit(channel, request, timeout=60)
            np.testing.assert_array_equal(result.image_array(), expected)
            # the one photo went through segments of this pipeline (now in the steps' pools)
            assert _segments(f"stepchain-{name}-")
            for _ in range(2):
                result = step_client.submit(channel, request, timeout=60)
                np.testing.assert_array_equal(result.image_array(), expected)
        assert api.delete(f"/pipeline/{name}").status_code == 200
    assert _segments(f"stepchain-{name}-") == []
