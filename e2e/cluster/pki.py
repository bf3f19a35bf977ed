"""A throwaway private PKI for TLS tests, made with the openssl command line tool: a CA and
certificates it signs, each usable as server and as client (what a peer or an etcd client needs).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


class Pki:
    """Certificates under ``directory``: ``ca(name)`` makes ``<name>.pem`` and ``<name>-key.pem``
    (self-signed); ``issue(name, ca, sans)`` makes ``<name>.pem``/``<name>-key.pem`` signed by the
    CA ``ca``, with the subjectAltNames ``sans`` (e.g. ``"IP:127.0.0.1"``, ``"DNS:peers.test"``)."""

    def __init__(self, directory: Path):
        if shutil.which("openssl") is None:
            raise AssertionError("openssl not found: apt-get install openssl")
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}-key.pem"

    def ca(self, name: str) -> "Pki":
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key(name).name,
                 "-out", self.cert(name).name, "-days", "2", "-subj", f"/CN={name}", cwd=self.dir)
        return self

    def issue(self, name: str, ca: str, sans: str = "IP:127.0.0.1") -> "Pki":
        ext = self.dir / f"{name}.ext"
        ext.write_text(f"subjectAltName={sans}\nextendedKeyUsage=serverAuth,clientAuth\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key(name).name,
                 "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=self.dir)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", self.cert(ca).name, "-CAkey",
                 self.key(ca).name, "-CAcreateserial", "-out", self.cert(name).name, "-days", "2",
                 "-extfile", ext.name, cwd=self.dir)
        return self
