"""A concurrent reader of the output prefix: what a downstream consumer could see at any moment.

It polls S3 (moto directly, not through the fault proxy: it is a consumer, not the system under test),
reads every object version it has not read yet (by key and ETag) and records a *partial object* when

- an image does not decode to its last pixel (truncated or otherwise broken),
- a sidecar is not valid JSON or names no result key,
- a sidecar's image is missing when the sidecar is seen (the pipeline writes the image first).

The pipeline's purchase ledger (`<prefix>/.retouch-pipeline/ledger/`) is not an output: its objects are only
kept for the leak scan (`ledger_bodies`). A sidecar whose image is present but has another content hash is
not partial (an image overwritten by a newer result just before its sidecar); it is counted as
`stale_sidecar_reads` for information.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from retouch_pipeline.state_objects import is_reserved_key


@dataclass
class Observations:
    reads: int = 0
    partial: list[str] = field(default_factory=list)
    stale_sidecar_reads: int = 0
    sidecar_bodies: list[bytes] = field(default_factory=list)
    ledger_bodies: list[bytes] = field(default_factory=list)


class OutputObserver:
    """`start()` a polling thread; `stop()` makes one last full pass and returns the observations."""

    def __init__(self, s3: Any, bucket: str, prefix: str, interval: float = 0.25) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.prefix = prefix
        self.interval = interval
        self.result = Observations()
        self._seen: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="chaos-observer")

    def start(self) -> OutputObserver:
        self._thread.start()
        return self

    def stop(self) -> Observations:
        self._stop.set()
        self._thread.join(timeout=60)
        self.poll()
        return self.result

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception as exc:
                self.result.partial.append(f"observer error: {type(exc).__name__}: {exc}")

    def poll(self) -> None:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        listed = [(o["Key"], o["ETag"]) for page in pages for o in page.get("Contents", [])]
        for key, etag in listed:
            if (key, etag) in self._seen:
                continue
            self._seen.add((key, etag))
            try:
                body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except self.s3.exceptions.NoSuchKey:
                continue  # overwritten or deleted between list and get: nothing was visible
            if is_reserved_key(key, self.prefix):  # ledger, state, write probe: scanned for leaks only
                self.result.ledger_bodies.append(body)
                continue
            self.result.reads += 1
            problem = self._check_sidecar(body) if key.endswith(".json") else self._check_image(body)
            if problem:
                self.result.partial.append(f"{key}: {problem}")

    @staticmethod
    def _check_image(body: bytes) -> str | None:
        try:
            with Image.open(io.BytesIO(body)) as image:
                image.load()
        except Exception as exc:
            return f"undecodable image ({len(body)} bytes): {exc}"
        return None

    def _check_sidecar(self, body: bytes) -> str | None:
        self.result.sidecar_bodies.append(body)
        try:
            sidecar = json.loads(body)
            image_key = sidecar["result"]["key"]
            expected_hash = sidecar["result"]["content_hash"]
        except (ValueError, KeyError, TypeError) as exc:
            return f"unreadable sidecar: {exc}"
        try:
            image = self.s3.get_object(Bucket=self.bucket, Key=image_key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return f"sidecar without its image {image_key}"
        if hashlib.sha256(image).hexdigest() != expected_hash:
            self.result.stale_sidecar_reads += 1
        return None
