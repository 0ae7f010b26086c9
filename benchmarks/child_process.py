"""Running a benchmark child process while sampling the memory of its whole process tree (shared by
``prepare_scaling.py`` and ``video_loading.py``: preparation forks workers, whose memory ``ru_maxrss`` misses)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any, NamedTuple


class Sampled(NamedTuple):
    """What a sampled child gave: its result line (``None`` if it printed none), exit code, wall seconds, and the peak
    total RSS and PSS in bytes of the child and every process it started (sampled every 0.1 s; PSS splits shared
    pages between processes: the honest total of a forked tree)."""

    result: dict[str, Any] | None
    returncode: int
    wall_s: float
    peak_rss: int
    peak_pss: int


def run_sampled(command: list[str], env: dict[str, str], log: Path, result_prefix: str, cwd: Path) -> Sampled:
    """Run ``command`` (stderr appended to ``log``), sample its process tree until it ends, and read the JSON after
    the first stdout line starting with ``result_prefix``."""
    import psutil

    began = time.perf_counter()
    peak_rss = peak_pss = 0
    with log.open("a") as err:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=cwd)
        root = psutil.Process(process.pid)
        while process.poll() is None:
            rss = pss = 0
            try:
                for proc in [root, *root.children(recursive=True)]:
                    try:
                        info = proc.memory_full_info()
                        rss, pss = rss + info.rss, pss + info.pss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
            except psutil.NoSuchProcess:
                pass
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(0.1)
        out = process.stdout.read()
    wall = time.perf_counter() - began
    result = next((json.loads(line[len(result_prefix):]) for line in out.splitlines()
                   if line.startswith(result_prefix)), None)
    return Sampled(result, process.returncode, wall, peak_rss, peak_pss)
