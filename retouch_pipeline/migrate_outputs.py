"""`retouch-pipeline migrate-outputs [--dry-run]`: move outputs written under the pre-issue-16 key scheme.

Why: before issue 16 an output key replaced the source's extension (`pair.jpg` -> `pair.png`), so `pair.jpg`
and `pair.png` wrote the same object. Outputs now keep it (`pair.jpg.png`, see `catalog.keys`). This command
moves each output to the key its sidecar's source gets now, sidecar included (its `result.key` rewritten);
an output already at its key is not touched, so a second run moves nothing. Of a pair that collided only the
last writer's image exists: it moves to its own key; the other source has no output and the daily refresh
restores it from its recorded execution, free (its output is missing at its key).

Order per output: copy image, write sidecar at the new key, delete old sidecar, delete old image. Interrupted
anywhere, a re-run finishes the move (an output whose new key already holds the same source is only cleaned).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from retouch_pipeline.catalog.keys import output_key
from retouch_pipeline.catalog.scanner import normalize_prefix
from retouch_pipeline.processing.deliver import move_output, read_sidecar, sidecar_key
from retouch_pipeline.refresh_plan import list_etags
from retouch_pipeline.resources import CatalogResource

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@dataclass
class Migration:
    """What a migration did (or, dry, would do)."""

    moved: list[tuple[str, str]] = field(default_factory=list)
    correct: int = 0
    foreign: list[str] = field(default_factory=list)
    """Outputs whose sidecar names a source outside this catalog: left alone."""

    def describe(self, dry_run: bool) -> str:
        verb = "would move" if dry_run else "moved"
        return (
            f"{verb} {len(self.moved)} output(s); {self.correct} already at their key (untouched); "
            f"{len(self.foreign)} of another catalog left alone"
        )


def migrate_outputs(
    s3: S3Client, catalog: CatalogResource, dry_run: bool, echo: Callable[[str], Any]
) -> Migration:
    """Move every output of this catalog to its current key (see the module docstring)."""
    bucket = catalog.output_bucket
    listing = list_etags(s3, bucket, normalize_prefix(catalog.output_prefix), "CATALOG_OUTPUT_BUCKET")
    source_prefix = normalize_prefix(catalog.source_prefix)
    result = Migration()
    for image_key in sorted(k for k in listing if sidecar_key(k) in listing):
        source = read_sidecar(s3, bucket, image_key).get("source") or {}
        source_key = str(source.get("key") or "")
        if source.get("bucket") != catalog.source_bucket or not source_key.startswith(source_prefix):
            result.foreign.append(image_key)
            continue
        extension = image_key.rsplit(".", 1)[-1]
        target = output_key(catalog.output_prefix_normalized(), source_key[len(source_prefix) :], extension)
        if target == image_key:
            result.correct += 1
            continue
        echo(f"{'would move' if dry_run else 'moving'} s3://{bucket}/{image_key} -> {target}")
        result.moved.append((image_key, target))
        if not dry_run:
            move_output(s3, bucket, image_key, target)
    return result


def run_migration(dry_run: bool, echo: Callable[[str], Any] = print) -> int:
    """The command: the pipeline's catalog settings, its S3 client, one pass. Returns an exit status."""
    from dagster_aws.s3 import S3Resource

    from retouch_pipeline.definitions import resources

    catalog, s3_resource = resources["catalog"], resources["s3"]
    assert isinstance(catalog, CatalogResource) and isinstance(s3_resource, S3Resource)
    result = migrate_outputs(s3_resource.get_client(), catalog, dry_run, echo)
    echo(result.describe(dry_run))
    return 0
