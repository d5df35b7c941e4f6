"""Logging for the service roles: one format, and no secret or unbounded input in any record, ours or our
libraries' (grpcio logs a metadata value that is not UTF-8 whole, an `authorization` header included)."""

from __future__ import annotations

import logging
import re

SECRET = re.compile(r"(?i)\b(bearer\s+)[^\s'\"]+|\bmsk_[A-Za-z0-9_\-]+")
MAX_RECORD = 4096  # characters of one record's message; the rest is cut


def redact(text: str) -> str:
    text = SECRET.sub(lambda m: (m.group(1) or "msk_") + "[redacted]", text)
    return text if len(text) <= MAX_RECORD else f"{text[:MAX_RECORD]}… ({len(text)} characters, cut)"


class Redact(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def setup(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, Redact) for f in handler.filters):
            handler.addFilter(Redact())
