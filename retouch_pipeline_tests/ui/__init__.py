"""Browser tests of the Dagster UI against `make dev`'s stack (`make test-ui`)."""
