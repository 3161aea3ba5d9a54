"""A real Azure Blob Storage-compatible HTTP server on 127.0.0.1 for the az:// tests: Azurite, Microsoft's emulator
(npm; scripts/install-azurite), started as a subprocess on a free port, in memory, with its telemetry off (no test
reaches the internet). Its account is the emulator's well-known development account.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from azure.storage.blob import BlobServiceClient

from tests import server_process

OPT_OUT = "SENTDM_TESTS_WITHOUT_AZURITE"
ACCOUNT = "devstoreaccount1"
# the emulator's published development key (the same in every Azurite); not a secret
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class AzuriteMissing(Exception):
    pass


@dataclass(frozen=True)
class AzuriteServer:
    url: str  # http://127.0.0.1:PORT
    container: str  # made at start

    def env(self) -> dict[str, str]:
        """The environment an Azure client of the emulator reads."""
        return {
            "AZURE_STORAGE_ACCOUNT_NAME": ACCOUNT,
            "AZURE_STORAGE_ACCOUNT_KEY": KEY,
            "AZURE_STORAGE_USE_EMULATOR": "true",
            "AZURITE_BLOB_STORAGE_URL": self.url,
        }

    def client(self) -> BlobServiceClient:
        """Microsoft's own client, for the tests' own looking and arranging (the product uses its own library)."""
        return BlobServiceClient(f"{self.url}/{ACCOUNT}", credential={"account_name": ACCOUNT, "account_key": KEY})


def find_azurite() -> str:
    found = shutil.which("azurite-blob")
    if found is None:
        raise AzuriteMissing(
            "azurite-blob is not installed: the az:// tests run against it. Install it (`bash scripts/install-azurite`;"
            f" .ci/run does), or set {OPT_OUT}=1 to skip those tests."
        )
    return found


@contextlib.contextmanager
def running_azurite(*, container: str = "campaigns") -> Iterator[AzuriteServer]:
    command = [
        find_azurite(),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        "0",
        "--inMemoryPersistence",
        "--disableTelemetry",
        "--skipApiVersionCheck",
    ]
    with tempfile.TemporaryDirectory(prefix="azurite-") as folder:
        log_path = Path(folder) / "server.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=dict(os.environ))
        try:
            url = server_process.wait_for_address(
                log_path, process, r"listens on (http://127\.0\.0\.1:\d+)", "azurite-blob"
            )
            server = AzuriteServer(url, container)
            server.client().create_container(container)
            yield server
        finally:
            server_process.stop(process)
