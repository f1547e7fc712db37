"""The one stack builder: every piece a test, the UI tests, the deploy tests, chaos, `make dev` and the
benchmarks stand their stack up from.

- `net`: free loopback ports, port and HTTP probes, `wait_until` (polling with a reason when it gives up);
- `s3`: moto's S3/SQS server (the only place it is started, as a thread or as a process), dummy AWS
  credentials, boto3 clients, buckets, seeding, SQS notifications;
- `process`: child processes in their own session with a log file, and the process tree below a pid;
- `env`: the pipeline's environment for a stack (the variables the definitions read, set from a sandbox and
  a local S3);
- `sandbox`: the sandbox AutoRetouch as a child process (`retouch-pipeline sandbox --port 0`);
- `inprocess`: sandbox + bucket + Dagster instance in this process, runs shaped like a backfill's
  (`InProcessStack`, the pipeline tests and chaos);
- `deploy`: Dagster in its production shape (PostgreSQL, gRPC code server, webserver, daemon as processes;
  the deploy tests and the benchmarks);
- `dev`: `retouch-pipeline dev` as a child process (the dev-stack and browser tests);
- `sensor`: a catalog sensor evaluated tick by tick as the daemon applies it, on stand-in assets (`standin`).
"""
