"""Stored match runs and their list rows, for the API, deliveries and the monthly trend."""

from __future__ import annotations
