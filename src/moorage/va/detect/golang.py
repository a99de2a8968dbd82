"""Detector for golang (not written yet)."""

from __future__ import annotations

from moorage.va.detect import Detector

DETECTORS: list[Detector] = []
