"""A step server's default limits: the one place the step server, its command line, clients and
the manifest renderer read them from.

Plain constants, no imports: building a command line or rendering manifests stays free of gRPC
and NumPy. The hard ceilings a flag may not exceed live with what they protect
(``native.registry.MAX_PIXELS``/``MAX_PASSES``/``MAX_THREADS``, gRPC's ``MAX_MESSAGE_MB``).
"""

from __future__ import annotations

MIB = 1024 * 1024

#: Largest image a step accepts or produces by default: 40 megapixels, about 8K x 5K. A 40 MP
#: RGBA image is 160 MB and a step holds a few copies of it (request, decoded, kernel output,
#: forward), which fits a default 1 GiB pod; native.registry.MAX_PIXELS (2^28, 16K x 16K) takes
#: a step to several GB.
DEFAULT_MAX_PIXELS = 40_000_000
#: Most kernel passes one request may ask for (overrides.passes) by default: passes make a
#: kernel heavier on purpose, and any client may send them.
DEFAULT_MAX_PASSES = 100
#: Largest gRPC message by default (`--max-message-mb`), both ways, for steps and their clients.
DEFAULT_MAX_MESSAGE_MB = 64
DEFAULT_MAX_MESSAGE_BYTES = DEFAULT_MAX_MESSAGE_MB * MIB
#: gRPC keeps message sizes in a signed 32-bit int: 2048 MiB would overflow it.
MAX_MESSAGE_MB = 2047
#: Seconds between keepalive pings on a connection to a step, and the time a ping gets to be
#: answered before the connection is dropped (`--keepalive`): a next step that vanished without
#: a reset is found within ~2 x this.
DEFAULT_KEEPALIVE_S = 1.0
#: The shortest keepalive a client may use: step servers accept pings this often (gRPC's own
#: default calls more than one ping per 5 minutes without data abuse and closes the connection).
MIN_KEEPALIVE_S = 0.1
#: Longest a request waits for a next step to come back when none answered, within its deadline
#: (`--next-step-wait`): a step restarting in place, a channel in reconnect back-off.
DEFAULT_NEXT_STEP_WAIT_S = 10.0
#: Bounds of what a client may put in a request's header, which every step carries, echoes and
#: may log or trace (step.proto says them; more is INVALID_ARGUMENT naming the field).
MAX_REQUEST_ID_BYTES = 128
MAX_LABELS = 32
MAX_LABEL_KEY_BYTES = 64
MAX_LABEL_VALUE_BYTES = 256
