"""Logging: text or JSON lines, each carrying the request id of the call it belongs to.

The request id is the client's (`request_id` field or `x-request-id` metadata) or one ember made;
it is set per call in a context variable, so every line logged while answering it — in the
servicer, the scheduler's error paths, anywhere on that task — carries it.
"""
from __future__ import annotations

import json
import logging
import time

from .servicers import request_id_var


class _RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "request_id", ""):
            out["request_id"] = record.request_id
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_RequestId())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"
                                               "%(request_id_suffix)s"))
        handler.addFilter(_suffix)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _suffix(record: logging.LogRecord) -> bool:
    rid = getattr(record, "request_id", "")
    record.request_id_suffix = f" [request {rid}]" if rid else ""
    return True
