"""Durable batch jobs: a prefix of images (or one huge image) in object storage through a pipeline.

The room answers one question: *how does a batch of images get through a pipeline so that no
crash loses or duplicates an output?* Its answer is the store: a job's manifest, its input
snapshot, its failed items and the tiles of a huge image live in the output location under
``_stepchain/<job-id>/``, and one output object per input is written there atomically with a
conditional write (``If-None-Match: *``), named from the input key. A runner that starts (again,
or beside another) lists what is there and does only the rest.

- :mod:`.locations` -- ``s3://bucket/prefix/`` and ``file:///dir/`` URIs, output names (pure)
- :mod:`.aws` -- endpoint, region and credentials read as AWS tools read them (pure)
- :mod:`.store` -- the store: list, get, put-if-absent, delete on S3 or local files (obstore)
- :mod:`.manifest` -- the job document and the layout of a job's objects in the store
- :mod:`.plan` -- which inputs are done, counts, throughput, ETA, the job's state (pure)
- :mod:`.runner` -- one worker's share of a job: read, call the pipeline, write the output
- :mod:`.tiled` -- a huge image as tiles kept in the store, only missing ones redone

May import: ``stepsvc`` (the client call, codec, tiles), ``native`` (halo), the standard
library, obstore, grpc, numpy. Never the HTTP service, the backends or the console: they import
this room, not the other way round.
"""
