"""The Dagster code location (`workspace.yaml` and `[tool.dagster]` point here).

Loading this module must never call AutoRetouch or S3: Dagster imports it in the webserver, the daemon and
every run, and a network call here would turn each of those into API traffic.
"""

from __future__ import annotations

import dagster as dg

defs = dg.Definitions()
