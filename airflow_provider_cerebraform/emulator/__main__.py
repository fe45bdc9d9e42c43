"""``python -m airflow_provider_cerebraform.emulator``: run the emulator (see ``cli.py``)."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
