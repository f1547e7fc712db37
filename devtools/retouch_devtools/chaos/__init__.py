"""The reliability harness: the real pipeline under named faults, then four invariants checked.

`retouch-pipeline chaos [--images N] [--profile NAME|all]` (see `docs/reliability.md`). Modules:
`stack` (the world and the Dagster machinery), `s3proxy` (S3 faults on the wire), `killer` (SIGKILL at a
stage), `observer` (a concurrent reader of the outputs), `catalog` (good and bad inputs), `profiles`,
`invariants`, `harness` (orchestration), `cli` (the command).
"""

from retouch_devtools.chaos.profile import Profile
from retouch_devtools.chaos.profiles import PROFILES

__all__ = ["PROFILES", "Profile"]
