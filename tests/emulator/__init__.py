"""Tests of the Cerebraform emulator, over real HTTP on loopback."""

from __future__ import annotations
