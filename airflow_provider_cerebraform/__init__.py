"""Apache Airflow provider for Cerebraform, the generative image and video API."""

from __future__ import annotations

__version__ = "0.1.0"
