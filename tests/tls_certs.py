"""Self-signed certificates for TLS tests, made by the openssl command (importable from any
test package: pyproject.toml puts tests/ on pytest's sys.path)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def make_cert(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 named ``name`` (its own CA) and its key."""
    cert, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _new_key(key: Path) -> list[str]:
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key)]


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    """A CA certificate named ``name`` and its key, for ``issue_cert``."""
    cert, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
    _openssl("req", "-x509", *_new_key(key), "-out", str(cert), "-days", "1",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def issue_cert(folder: Path, name: str, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 named ``name`` signed by ``ca`` (cert, key), good for
    servers and clients alike, with a random serial number; and its key."""
    cert, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
    csr, ext = folder / f"{name}.csr", folder / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
                   "basicConstraints=CA:FALSE\n")
    _openssl("req", "-new", *_new_key(key), "-out", str(csr), "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-out", str(cert),
             "-days", "1", "-extfile", str(ext))
    csr.unlink()
    ext.unlink()
    return cert, key


def replace_file(src: Path, dst: Path) -> None:
    """Put ``src``'s content at ``dst`` the way rotation tools do: a new file renamed over
    the old one (a new inode)."""
    tmp = dst.with_name(dst.name + ".new")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
