"""Development tooling of retouch-pipeline, kept out of the product package and its production image.

`sandbox` (a local AutoRetouch), `devstack` (`make dev`), `samples` (deterministic product photos), `chaos`
(the reliability harness), `procgroup` (child process trees), `commands` (their `retouch-pipeline`
commands). The product never imports this package; this package imports the product.
"""
