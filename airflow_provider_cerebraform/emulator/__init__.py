"""A faithful local Cerebraform server, standard library only (plus the bundled ffmpeg for videos).

Public names are imported lazily so ``import airflow_provider_cerebraform.emulator`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .admin import EmulatorAdmin, EmulatorAdminError
    from .config import DEFAULT_API_KEY, FAIL_MARKER, EmulatorConfig, KeySpec
    from .faults import FaultRule
    from .process import EmulatorProcess
    from .server import CerebraformEmulator
    from .state import EmulatorState, key_label

_EXPORTS = {
    "CerebraformEmulator": "server",
    "DEFAULT_API_KEY": "config",
    "EmulatorAdmin": "admin",
    "EmulatorAdminError": "admin",
    "EmulatorConfig": "config",
    "EmulatorProcess": "process",
    "EmulatorState": "state",
    "FAIL_MARKER": "config",
    "FaultRule": "faults",
    "KeySpec": "config",
    "key_label": "state",
}

__all__ = [
    "DEFAULT_API_KEY",
    "FAIL_MARKER",
    "CerebraformEmulator",
    "EmulatorAdmin",
    "EmulatorAdminError",
    "EmulatorConfig",
    "EmulatorProcess",
    "EmulatorState",
    "FaultRule",
    "KeySpec",
    "key_label",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
