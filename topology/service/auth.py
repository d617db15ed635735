"""The topology API's bearer token: generated at first start, kept in the state dir, read by clients.

As Jupyter does: the service creates a random token on its first start (``<state-dir>/token``,
mode 0600, reused on later starts), prints it with its URL, and requires it as
``Authorization: Bearer <token>`` on every write — on loopback too, since any local process
could otherwise start step processes. Clients on the same machine (the CLI, ``make demo``, the
console) read it with :func:`client_token`. ``--token-file`` replaces the generated token (the
Helm chart mounts one from a Secret); ``--no-auth`` turns auth off, loudly.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

#: The token file inside the state dir.
TOKEN_FILE_NAME = "token"
#: Shortest token accepted from a file (a generated one has 43 characters).
MIN_TOKEN_CHARS = 16
#: Environment variable a client may set instead of reading the state dir.
TOKEN_ENV = "STEPCHAIN_TOKEN"


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """The state dir unless configured (``$XDG_STATE_HOME/stepchain``, else
    ``~/.local/state/stepchain``): the token lives there, and the local backend keeps step
    configs, discovery files and logs there."""
    base = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                         "state")
    return Path(base) / "stepchain"


def token_path(state_dir: Path) -> Path:
    """Where the service keeps its generated token."""
    return Path(state_dir) / TOKEN_FILE_NAME


def read_token(path: str | Path) -> str:
    """The token in `path` (surrounding whitespace removed); ValueError when unusable."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read token file {path}: {exc.strerror}") from None
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"token file {path} holds {len(token)} characters; use at least "
                         f"{MIN_TOKEN_CHARS} (e.g. `openssl rand -hex 32`)")
    return token


def ensure_token(state_dir: Path) -> str:
    """The token of `state_dir`, generated (mode 0600) when there is none yet.

    The file is created with O_EXCL and mode 0600 in one step, so it is never readable by
    others, not even for an instant; a file left with wider permissions is tightened.
    """
    path = token_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return read_token(path)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return token


def client_token(state_dir: Path | None = None,
                 environ: Mapping[str, str] | None = None) -> str | None:
    """The token a client on this machine sends: ``STEPCHAIN_TOKEN``, else the file named by
    ``STEPCHAIN_TOKEN_FILE``, else ``<state-dir>/token`` (``STEPCHAIN_STATE_DIR`` or the default
    state dir); None when there is none (a service started with ``--no-auth``)."""
    env = os.environ if environ is None else environ
    if env.get(TOKEN_ENV):
        return env[TOKEN_ENV].strip()
    if env.get("STEPCHAIN_TOKEN_FILE"):
        return read_token(env["STEPCHAIN_TOKEN_FILE"])
    if state_dir is None:
        state_dir = Path(env["STEPCHAIN_STATE_DIR"]) if env.get("STEPCHAIN_STATE_DIR") \
            else default_state_dir(env)
    path = token_path(state_dir)
    return read_token(path) if path.exists() else None


def auth_header(token: str | None) -> dict[str, str]:
    """The header a client adds to its writes (none without a token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an Authorization header carries `Bearer <token>` (constant-time compare)."""
    if not authorization:
        return False
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())
