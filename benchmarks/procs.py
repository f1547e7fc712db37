"""CPU and memory of process trees from /proc (no psutil here): what the pipeline's own processes cost.

Why poll: run workers are short-lived children of the gRPC code server; their CPU time and peak RSS must be
read while they exist. Each sample keeps, per pid, the last CPU time and the highest `VmHWM` (the kernel's own
peak-RSS counter, so the peak between two samples is not missed).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class PidInfo:
    pid: int
    ppid: int
    cmdline: str
    cpu_seconds: float = 0.0
    rss_kb: int = 0
    hwm_kb: int = 0
    first_rss_kb: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0


def _read_stat(pid: int) -> tuple[int, float] | None:
    """(ppid, utime+stime seconds) of a live pid, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def read_mem(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, CPU seconds) of every live process: one pass over /proc."""
    table: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := _read_stat(int(name))) is not None:
            table[int(name)] = stat
    return table


def descendants(roots: set[int], table: Mapping[int, tuple[int, float]]) -> set[int]:
    """The roots and every live process below them in `table`."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


@dataclass
class TreeSampler:
    """Samples named process trees every `interval` seconds in a background thread."""

    roots: dict[str, int]
    interval: float = 0.25
    pids: dict[str, dict[int, PidInfo]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> TreeSampler:
        self._thread = threading.Thread(target=self._loop, name="tree-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        # One pass over /proc per sample, whatever the number of trees: the sampler shares the 2 cores with
        # what it measures.
        now = time.monotonic()
        table = proc_table()
        for name, root in self.roots.items():
            tree = self.pids.setdefault(name, {})
            for pid in descendants({root}, table):
                stat = table.get(pid)
                if stat is None:
                    continue
                info = tree.get(pid)
                if info is None:
                    info = tree[pid] = PidInfo(pid, stat[0], _cmdline(pid), first_seen=now)
                rss, hwm = read_mem(pid)
                if not info.first_rss_kb:
                    info.first_rss_kb = rss
                info.cpu_seconds = stat[1]
                info.rss_kb, info.hwm_kb, info.last_seen = rss, max(info.hwm_kb, hwm), now

    def cpu_seconds(self, name: str, contains: str | None = None) -> float:
        """CPU of every process of the tree seen so far (optionally only commands containing `contains`)."""
        return sum(
            p.cpu_seconds
            for p in self.pids.get(name, {}).values()
            if contains is None or contains in p.cmdline
        )

    def matching(self, name: str, contains: str) -> list[PidInfo]:
        return [p for p in self.pids.get(name, {}).values() if contains in p.cmdline]


def cpu_snapshot(sampler: TreeSampler) -> dict[str, float]:
    """CPU seconds per tree right now (take two and subtract to get a phase's cost)."""
    sampler.sample()
    return {name: sampler.cpu_seconds(name) for name in sampler.roots}


def run_json_child(
    argv: list[str], env: Mapping[str, str], timeout: float, what: str, cwd: Path | None = None
) -> dict[str, Any]:
    """Run a benchmark's child process and return the JSON object on its last stdout line."""
    done = subprocess.run(  # noqa: S603 (our own interpreters and modules, no shell)
        argv, cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
