"""The gateway's serving modules never import torch; the zoo's torch-free name list matches the zoo."""

from __future__ import annotations

import subprocess
import sys

from shared import zoo
from shared.catalog import ZOO_NAMES

SERVING = ("gateway.app", "gateway.serve", "gateway.service", "gateway.cli", "gateway.deploy", "gateway.workers")


def test_importing_the_gateway_serving_modules_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in SERVING)
        + "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        + "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "", f"the gateway imported {out.stdout.strip()}"


def test_zoo_catalog_lists_the_zoo() -> None:
    assert list(ZOO_NAMES) == zoo.names()
