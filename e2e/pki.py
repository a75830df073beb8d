"""A throw-away certificate authority for tests, made with the openssl CLI (EC keys: fast)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Optional

from e2e.requirements import missing

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


class TestCA:
    """``ca.crt``/``ca.key`` in ``directory``; ``issue`` signs ``<name>.crt``/``<name>.key``."""

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, directory: Path, common_name: str = "test-ca") -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            missing("openssl is required")
        self.openssl = openssl
        self.directory = directory
        self._run("req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
                  "-subj", f"/CN={common_name}")
        self.cert = directory / "ca.crt"

    def _run(self, *args: str) -> None:
        subprocess.run([self.openssl, *args], cwd=self.directory, check=True,
                       capture_output=True)

    def issue(self, name: str, common_name: str, extensions: Optional[str] = None) -> None:
        """Sign ``<name>.crt`` (key ``<name>.key``); ``extensions`` as an openssl extfile."""
        self._run("req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                  "-subj", f"/CN={common_name}")
        extfile: list[str] = []
        if extensions is not None:
            (self.directory / f"{name}.ext").write_text(extensions)
            extfile = ["-extfile", f"{name}.ext"]
        self._run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                  "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", *extfile)
