"""Signed, expiring media URLs: ``/media/<name>?exp=<epoch ms>&sig=<hmac>``."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import parse_qs

from .errors import ApiError


class UrlSigner:
    """Signs media paths with an HMAC and an expiry; checks them on download.

    :param secret: HMAC key (random per emulator when not given).
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _sig(self, path: str, exp: str) -> str:
        message = f"{path}?exp={exp}".encode("utf-8", "surrogatepass")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]

    def sign(self, path: str, ttl: float | None) -> str:
        """Return ``path`` with ``exp`` and ``sig`` query parameters, or unchanged when ``ttl`` is ``None``.

        :param path: the media path.
        :param ttl: real seconds the URL stays valid.
        """
        if ttl is None:
            return path
        exp = str(int((time.time() + ttl) * 1000))
        return f"{path}?exp={exp}&sig={self._sig(path, exp)}"

    def check(self, path: str, query: str, required: bool) -> None:
        """Raise 403 for a tampered or expired URL.

        A URL that carries a signature is always checked; one without is refused when ``required``.

        :param path: the media path.
        :param query: the raw query string.
        :param required: signed URLs are in force (``url_ttl`` is set).
        """
        params = parse_qs(query, keep_blank_values=True)
        exp_values, sig_values = params.get("exp"), params.get("sig")
        if not exp_values and not sig_values:
            if required:
                raise ApiError(
                    403, "invalid_signature", "This media URL must be signed; fetch the result again."
                )
            return
        if not exp_values or not sig_values or len(exp_values) != 1 or len(sig_values) != 1:
            raise ApiError(403, "invalid_signature", "Malformed media URL signature.")
        exp, sig = exp_values[0], sig_values[0]
        given = sig.encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(self._sig(path, exp).encode("ascii"), given):
            raise ApiError(403, "invalid_signature", "Invalid media URL signature.")
        if not exp.isdigit() or int(exp) <= time.time() * 1000:
            raise ApiError(
                403, "url_expired", "This media URL has expired; fetch the result again for fresh URLs."
            )
