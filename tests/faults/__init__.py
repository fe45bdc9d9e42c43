"""Fault injection through the real operators: reliability and security."""

from __future__ import annotations
