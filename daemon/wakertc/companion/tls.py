"""The companion's TLS certificate, reloaded when its files change (a renewal needs no restart).

Certificates from Let's Encrypt or a home CA are renewed every few weeks by another program
(certbot, acme.sh) that replaces the files. `Certificate.watch()` checks them every
`check_s` seconds and loads a changed pair into the live `SSLContext`: connections opened after
that get the new certificate, open ones keep theirs. A pair that does not load (the renewal half
done, a key that does not match) leaves the old one serving, and is tried again at the next check.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path

log = logging.getLogger(__name__)

CHECK_S = 60.0
# Loads redone because the files changed meanwhile, before the change counts as a failure.
LOAD_ATTEMPTS = 5


class CertificateError(Exception):
    """The certificate and key do not load (the message names the files and why)."""


class Certificate:
    """A server `SSLContext` for `cert` and `key`, kept in step with the files."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert = cert
        self.key = key
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._stamp = self._files_stamp()
        self._load(self.context)

    def reload_if_changed(self) -> bool:
        """Load the files into the live context if they changed since the last load; True if a
        new certificate now serves. Never raises for bad files: it logs and keeps the old one."""
        try:
            stamp = self._files_stamp()
        except OSError as exc:
            log.warning("TLS certificate not reloaded: %s", exc)
            return False
        if stamp == self._stamp:
            return False
        try:
            self._load(self.context)
        except CertificateError as exc:
            log.warning("TLS certificate not reloaded, the old one still serves: %s", exc)
            return False
        self._stamp = stamp
        log.info("TLS certificate reloaded from %s", self.cert)
        return True

    async def watch(self, check_s: float = CHECK_S) -> None:
        """Check the files every `check_s` seconds until cancelled."""
        while True:
            await asyncio.sleep(check_s)
            self.reload_if_changed()

    def _files_stamp(self) -> tuple[tuple[int, int, int], ...]:
        # The inode too: renewals usually write new files and rename (or relink) them into place.
        return tuple(
            (info.st_ino, info.st_mtime_ns, info.st_size)
            for info in (os.stat(self.cert), os.stat(self.key))
        )

    def _load(self, context: ssl.SSLContext) -> None:
        """Load the pair into `context` from its own paths (no copy of the key is written
        anywhere), checked first in a scratch context: a failed load_cert_chain can leave a
        context with the new certificate and no key. A renewal landing between the reads could
        mix two pairs: the files are read before and after each load, and a load during which
        they changed is done again."""
        for _attempt in range(LOAD_ATTEMPTS):
            before = self._read_pair()
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                    self.cert, self.key
                )
                if self._read_pair() != before:
                    continue
                context.load_cert_chain(self.cert, self.key)
            except (OSError, ssl.SSLError) as exc:
                if self._read_pair() != before:
                    continue  # half renewed while we read it: try the pair now in place
                raise CertificateError(f"cannot load {self.cert} with {self.key}: {exc}") from None
            if self._read_pair() == before:
                return
        raise CertificateError(
            f"{self.cert} and {self.key} kept changing while being loaded "
            f"({LOAD_ATTEMPTS} attempts)"
        )

    def _read_pair(self) -> tuple[bytes, bytes]:
        try:
            return self.cert.read_bytes(), self.key.read_bytes()
        except OSError as exc:
            raise CertificateError(f"cannot read {exc.filename}: {exc.strerror}") from None
