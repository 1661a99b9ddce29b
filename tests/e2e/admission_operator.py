"""scapguard's admission webhook alone, served for real: ``kopf run`` this file.

``scapguard.handlers/__init__`` imports (and so registers) every handler of the operator. This
harness puts a bare package in its place before importing ``scapguard.handlers.admission``, so
that the operator it runs has the admission handlers and the startup below, nothing else.
Configured from ``SCAPGUARD_E2E_WEBHOOK_*`` variables, read at startup.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path
from typing import Any

import kopf

import scapguard


def _admission_handlers_only() -> types.ModuleType:
    package = types.ModuleType("scapguard.handlers")
    package.__path__ = [str(Path(scapguard.__file__).parent / "handlers")]
    sys.modules.setdefault("scapguard.handlers", package)
    return importlib.import_module("scapguard.handlers.admission")


admission = _admission_handlers_only()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    options = admission.AdmissionOptions(
        certfile=os.environ["SCAPGUARD_E2E_WEBHOOK_CERT"],
        pkeyfile=os.environ["SCAPGUARD_E2E_WEBHOOK_KEY"],
        bind="127.0.0.1",
        port=int(os.environ["SCAPGUARD_E2E_WEBHOOK_PORT"]),
        failure_policy="Fail",
    )
    # Only webhooks here: no resource watching, so no need to observe CRDs (and no RBAC for it).
    settings.scanning.disabled = True
    admission.configure_admission(settings, memo, options)
