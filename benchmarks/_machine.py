"""Machine description recorded next to every benchmark number."""

from __future__ import annotations

import json
import platform


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def report(result: dict, path=None) -> None:
    """Print a benchmark's result as JSON and write it to ``path`` (a Path) when given."""
    text = json.dumps(result, indent=1, default=float)
    print(text)
    if path is not None:
        path.write_text(text + "\n")
