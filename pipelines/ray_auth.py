"""Ray's token authentication, as arscale uses it.

A cluster started with RAY_AUTH_MODE=token accepts only requests that carry its token. Ray looks for the token in
$RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token; clients send it only when
RAY_AUTH_MODE=token is set in their own process, and `ray.init(address=...)` never turns that on by itself. So
`arscale cluster up` creates a token when there is none, and every arscale client turns token mode on whenever a
token is at hand (a cluster without authentication ignores it).
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

MODE_ENV, TOKEN_ENV, PATH_ENV = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
HOW_TO_GET = ("the cluster's token is printed by `ray get-auth-token` on its head node (for `arscale cluster up`: "
              "the file it names); put it in ~/.ray/auth_token or set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH")


def token_path() -> Path:
    """Where Ray reads the token from when $RAY_AUTH_TOKEN is not set."""
    return Path(os.environ.get(PATH_ENV) or Path.home() / ".ray" / "auth_token").expanduser()


def token_source() -> str | None:
    """Where this process's token comes from (for messages), or None when there is none."""
    if os.environ.get(TOKEN_ENV):
        return f"${TOKEN_ENV}"
    path = token_path()
    return str(path) if path.is_file() and path.read_text().strip() else None


def secure_token_file() -> None:
    """Make the token file readable by its owner only, saying so when it was not: Ray writes a token it generates
    with the umask's mode (0644: readable by every user of the machine)."""
    path = token_path()
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return
    if mode & 0o077:
        path.chmod(0o600)
        print(f"note: {path} (Ray's auth token) was readable by other users (mode {mode:o}); made it 0600",
              file=sys.stderr)


def ensure_token() -> str:
    """The token's source, after writing a new random token to token_path() if there is none (as
    `ray get-auth-token --generate` does, which refuses a $RAY_AUTH_TOKEN_PATH that does not exist yet). An
    existing token file is made private first."""
    secure_token_file()
    source = token_source()
    if source:
        return source
    path = token_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))  # 256 bits, like Ray's own generator
    return str(path)


def enable_client_auth(path: str | None = None) -> None:
    """Make this process send a token with its requests to Ray, if one is at hand.

    `path`: the token file of a cluster this machine started (used unless the environment names a token).
    An explicit RAY_AUTH_MODE is respected.
    """
    if path and not os.environ.get(TOKEN_ENV) and not os.environ.get(PATH_ENV) and Path(path).is_file():
        os.environ[PATH_ENV] = path
    if os.environ.get(MODE_ENV) or not token_source():
        return
    os.environ[MODE_ENV] = "token"
    if "ray._raylet" in sys.modules:  # Ray read its settings at import: have it read them again
        sys.modules["ray._raylet"].Config.initialize("")
