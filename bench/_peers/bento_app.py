"""BentoML's side of ``stepchain bench peers``: one service per step, chained by
``bentoml.depends``.

``Step1`` depends on ``Step2``, which depends on ``Step3``: each runs its kernel and hands the
result to the next through the dependency's client (what BentoML's "Distributed Services" guide
describes); the last answers, and the answers travel back up the chain, as in a stepchain
pipeline. ``bentoml serve bench._peers.bento_app:Step1`` runs every service as processes of its
own (one worker each) under one arbiter; between them BentoML calls over HTTP on Unix sockets
with its pickle serde (protocol 5, the array's buffer out of band), the default for a
dependency. The client calls ``Step1`` with the same serde.

APIs are ``async``: a step waits for the next one without holding a thread, and runs its kernel
(which releases the GIL) in a worker thread, so a service takes requests concurrently. A sync
API would run on BentoML's default of one thread per worker and hold it for the whole rest of
the chain. The chain and thread count come from the environment
(:func:`bench._peers.chains.to_env`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
from bentoml.validators import ContentType

from bench._peers.chains import from_body, from_env, run_kernel, shape_headers


class _Kernel:
    """Step `index` of the chain the process was started with (read when the service starts,
    so a client may import these classes for their signatures)."""

    index = 0

    def __init__(self) -> None:
        self.kernels, self.threads = from_env()

    async def kernel(self, image: np.ndarray) -> np.ndarray:
        return await asyncio.to_thread(run_kernel, self.kernels, self.index, image, self.threads)


@bentoml.service(workers=1)
class Step3(_Kernel):
    index = 2

    @bentoml.api
    async def process(self, image: np.ndarray) -> np.ndarray:
        return await self.kernel(image)


@bentoml.service(workers=1)
class Step2(_Kernel):
    index = 1
    next = bentoml.depends(Step3)

    @bentoml.api
    async def process(self, image: np.ndarray) -> np.ndarray:
        return await self.next.to_async.process(await self.kernel(image))


@bentoml.service(workers=1)
class Step1(_Kernel):
    index = 0
    next = bentoml.depends(Step2)

    @bentoml.api
    async def process(self, body: Annotated[Path, ContentType("application/octet-stream")],
                      /, ctx: bentoml.Context) -> bytes:
        """The entry: raw pixels in (a binary upload, BentoML's file input; the shape in
        headers), raw pixels out (the shape in headers)."""
        image = from_body(body.read_bytes(), ctx.request.headers)
        out = await self.next.to_async.process(await self.kernel(image))
        ctx.response.metadata.update(shape_headers(out))
        return out.tobytes()
