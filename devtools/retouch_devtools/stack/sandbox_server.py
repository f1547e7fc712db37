"""The sandbox AutoRetouch in its own process with a live image-work setting (the benchmarks run it so).

Usage: `python -m retouch_devtools.stack.sandbox_server '{"processing_seconds": 5, "workers": 16, ...}'`
(SandboxConfig fields). The first stdout line is the sandbox's announcement JSON. Each stdin line is a JSON
object of `SandboxConfig` fields changed live (only `image_work_max_side` is meant for it: the cold-collection
benchmark caps the sandbox's Pillow work so that its CPU does not compete with the pipeline on two cores, the
memory benchmark needs full-size results). EOF stops the server.

Why a process of its own: its CPU (uploads decoded, executions processed) must not be counted as, nor
compete under one GIL with, the clients being measured.
"""

from __future__ import annotations

import json
import sys

from retouch_devtools.sandbox import SandboxConfig, SandboxServer

LIVE_FIELDS = frozenset({"image_work_max_side"})


def main() -> None:
    config = SandboxConfig(**json.loads(sys.argv[1]))
    with SandboxServer(config) as sandbox:
        print(json.dumps(sandbox.announcement()), flush=True)
        for line in sys.stdin:
            changes = json.loads(line)
            unknown = set(changes) - LIVE_FIELDS
            if unknown:
                print(json.dumps({"error": f"not live: {sorted(unknown)}"}), flush=True)
                continue
            for name, value in changes.items():
                setattr(sandbox.config, name, value)
            print(json.dumps({"ok": changes}), flush=True)


if __name__ == "__main__":
    main()
