"""Stage 1b, upload: send the validated bytes to AutoRetouch, unless HEAD says it already has them.

Before the upload the item's output key is checked to belong to no other source
(`deliver.check_no_collision`): everything that could make the purchase useless is known before it is made.
"""

from __future__ import annotations

from collections.abc import Callable

from retouch_pipeline.autoretouch import InvalidImageError
from retouch_pipeline.processing.deliver import check_no_collision
from retouch_pipeline.processing.failures import HashMismatch, RejectedByAutoRetouch
from retouch_pipeline.processing.item import State, WorkItem
from retouch_pipeline.processing.step import Step
from retouch_pipeline.processing.validate import ACCEPTED_FORMATS, source_file, validate


def validate_and_upload(step: Step, item: WorkItem, hashed: Callable[[WorkItem], None] | None = None) -> None:
    """Read, validate and upload one image (one thread's job); raises a `Failure` for a named failure.

    `hashed(item)` is called as soon as the bytes are read and hashed (the orchestrator starts the image's
    purchase decision then, `create.Lookahead`)."""
    with source_file(step, item) as path:
        if hashed is not None:
            hashed(item)
        upload_path = validate(step, item, path)
        check_no_collision(step, item)
        upload(step, item, upload_path)


def upload(step: Step, item: WorkItem, path: str) -> None:
    """The bytes at `path` to AutoRetouch, checked against the local hash; the item becomes UPLOADED."""
    assert item.image is not None
    try:
        result = step.client.upload_image(
            path,
            filename=item.relative_key.rsplit("/", 1)[-1] + (".png" if item.converted_from else ""),
            content_type=ACCEPTED_FORMATS[item.image.format],
            skip_if_exists=True,
        )
    except InvalidImageError as exc:
        raise RejectedByAutoRetouch(str(exc)) from exc
    item.bytes_sent = result.uploaded
    if result.content_hash != item.content_hash:
        raise HashMismatch(f"server {result.content_hash} != local {item.content_hash}")
    item.advance(State.UPLOADED)
