"""ClawTerm: a session-persistent binary protocol for AI-agent terminals."""

from __future__ import annotations

__version__ = "0.1.0"
