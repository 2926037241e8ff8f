"""Who is at the console, and whether a request may change anything.

- **Exposure.** The console binds to loopback by default; any other address needs
  ``console.token`` (``check_exposure``, at start-up).
- **Sessions.** With a token set, a person signs in with a name and the token; without
  one (loopback only) a session is opened on the first visit under the name of the user
  running the console, and may be renamed on the sign-in page. The session is a signed
  cookie (HMAC-SHA256 with a key made when the console starts: a restart signs everyone
  out) carrying the name every decision is recorded under.
- **CSRF.** Every state-changing request carries the session's CSRF token, in the
  ``X-CSRF-Token`` header or a ``csrf_token`` form field; a request without it is refused.
  A script sending ``Authorization: Bearer <token>`` is not cookie-borne and needs none.

It knows nothing about cases or releases.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import time
from dataclasses import dataclass

from shared.errors import ConfigError

COOKIE = "gemma_console"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(
                ipaddress.ip_address(info[4][0]).is_loopback
                for info in socket.getaddrinfo(host, None)
            )
        except OSError:
            return False


def check_exposure(host: str, token: str | None) -> None:
    """ConfigError unless the console stays on this machine or asks for a token."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            "console",
            [
                (
                    "console.host",
                    host,
                    "reachable from other machines: set console.token (a long random secret, "
                    "e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`) or bind "
                    "to 127.0.0.1 and tunnel (ssh -L 8765:127.0.0.1:8765 teacher-box)",
                )
            ],
        )


@dataclass(frozen=True)
class Session:
    who: str
    sid: str
    expires: float


class Sessions:
    def __init__(self, token: str | None, hours: float):
        self.token = token
        self.hours = hours
        self._key = secrets.token_bytes(32)

    @property
    def open(self) -> bool:
        """No token: a visitor (on loopback) gets a session without signing in."""
        return not self.token

    def default_name(self) -> str:
        try:
            return getpass.getuser()
        except (KeyError, OSError):
            return "local"

    def check_token(self, given: str) -> bool:
        return bool(self.token) and hmac.compare_digest(given.encode(), self.token.encode())

    def bearer_ok(self, header: str | None) -> bool:
        if not header or not header.lower().startswith("bearer "):
            return False
        return self.check_token(header[7:].strip())

    def new(self, who: str) -> tuple[Session, str]:
        """A fresh session and its cookie value."""
        session = Session(
            clean_name(who), secrets.token_urlsafe(16), time.time() + 3600 * self.hours
        )
        body = base64.urlsafe_b64encode(
            json.dumps({"who": session.who, "sid": session.sid, "exp": session.expires}).encode()
        ).decode()
        return session, f"{body}.{self._sign(body)}"

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie carries, None if absent, forged or expired."""
        if not cookie or "." not in cookie:
            return None
        body, sig = cookie.rsplit(".", 1)
        if not hmac.compare_digest(sig, self._sign(body)):
            return None
        try:
            doc = json.loads(base64.urlsafe_b64decode(body.encode()))
            session = Session(str(doc["who"]), str(doc["sid"]), float(doc["exp"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires > time.time() else None

    def csrf(self, session: Session) -> str:
        return self._sign(f"csrf:{session.sid}")[:32]

    def csrf_ok(self, session: Session, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(given, self.csrf(session))

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()


def clean_name(who: str) -> str:
    """A person's name as decisions record it: printable, at most 64 characters."""
    name = " ".join("".join(ch for ch in who if ch.isprintable()).split())[:64]
    return name or "unknown"
