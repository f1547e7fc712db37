"""Performance benchmarks of issue 5 (scripts, not tests): `make bench` / `make bench-quick`.

`python -m benchmarks [--quick]` runs the five benchmarks against local services (the sandbox AutoRetouch,
moto's S3 and SQS, PostgreSQL, Dagster's webserver, daemon and gRPC code server as separate processes), prints
one table with every figure and ratio, then ONE JSON line. Ratios are taken within one run: the machine is
shared, so absolute seconds drift between runs while ratios measured side by side hold. See
docs/performance.md for the latest figures and what limits each.
"""
