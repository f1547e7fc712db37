"""Why an image failed: one class per kind of failure, each knowing its stage, whether a retry can help, and
the sentence a person reads in the partition's view.

Why classes and not strings: the step's failure, the partition's note in the UI and the run's retry decision
all read the same object (`kind`, `permanent`, `sentence`), so adding a failure kind is adding one class here,
and nothing parses a message back. `reason` keeps the "ClassName: detail" form users and tests already read.
"""

from __future__ import annotations

from typing import ClassVar

_TRANSIENT = (
    "A temporary error stopped this image at the {stage} stage ({reason}). Re-materialize it: nothing "
    "already paid is paid again."
)


class Failure(Exception):
    """One image failed at one stage; `reason` is what the step failure and the UI show for it."""

    stage_name: ClassVar[str] = "process"
    kind: ClassVar[str] = "transient_error"
    """A short, stable name of the failure kind (UI metadata `failure_class`, filterable)."""
    permanent: ClassVar[bool] = False
    """True when re-running the same step cannot help (the run is then not retried)."""
    template: ClassVar[str] = _TRANSIENT
    content_refusal: ClassVar[bool] = False
    """True when the source's bytes themselves are refused: settled until the source changes (its ETag)."""

    def __init__(self, detail: str, *, stage: str | None = None) -> None:
        self.detail = detail
        self.stage = stage or self.stage_name
        super().__init__(f"{self.stage}: {self.reason}")

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def reason(self) -> str:
        return f"{self.name}: {self.detail}"

    @property
    def sentence(self) -> str:
        """What happened and what to do, for a person looking at this one image."""
        return self.template.format(stage=self.stage, reason=self.reason)


class UnexpectedError(Failure):
    """An exception nobody named (network, S3, a bug): transient, reported under the exception's own name."""

    def __init__(self, error: BaseException, *, stage: str) -> None:
        self.error_name = type(error).__name__
        super().__init__(str(error), stage=stage)

    @property
    def name(self) -> str:
        return self.error_name


class InvalidImage(Failure):
    """The source cannot be processed as it is; nothing was spent."""

    stage_name = "validate"
    kind = "invalid_image"
    permanent = True
    content_refusal = True
    template = (
        "The source image cannot be processed ({reason}). No credit was spent. Replace the file in S3: the "
        "catalog sensor picks the new version up and processes it."
    )


class InvalidPartitionKey(InvalidImage):
    stage_name = "partition"
    content_refusal = False


class EmptySourceImage(InvalidImage):
    pass


class NotAnImage(InvalidImage):
    pass


class TruncatedImage(InvalidImage):
    pass


class UnsupportedFormat(InvalidImage):
    pass


class AnimatedImage(InvalidImage):
    pass


class ImageTooLarge(InvalidImage):
    pass


class UnsupportedMode(InvalidImage):
    """A pixel format with no defined colour meaning (32-bit integer or floating-point samples)."""


class BucketUnusable(Failure):
    """A bucket is missing or refuses this pipeline's credentials: permanent until someone fixes it."""

    stage_name = "read"
    kind = "bucket_unusable"
    permanent = True
    template = (
        "{reason}. Nothing was spent. A re-materialization cannot help until the bucket is fixed: create it "
        "or correct the bucket variable (CATALOG_SOURCE_BUCKET / CATALOG_OUTPUT_BUCKET), or grant this "
        "pipeline's credentials access, then re-materialize."
    )


def bucket_problem(error: BaseException, bucket: str, doing: str) -> str | None:
    """What an S3 error says about the bucket itself (missing, access denied), else None (transient).

    Duck-typed on botocore's `ClientError.response` so this module stays free of boto imports.
    """
    response = getattr(error, "response", None)
    code = str(((response or {}).get("Error") or {}).get("Code", "")) if isinstance(response, dict) else ""
    if code == "NoSuchBucket":
        return f"bucket {bucket!r} does not exist ({doing})"
    if code in ("AccessDenied", "403", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return f"bucket {bucket!r} refused {doing} ({code})"
    return None


class SourceBucketUnusable(BucketUnusable):
    pass


class OutputBucketUnusable(BucketUnusable):
    stage_name = "output"


class ConditionalWritesUnsupported(OutputBucketUnusable):
    """The output's S3 store ignores or refuses conditional PUTs: a purchase claim could not be atomic."""

    kind = "conditional_writes_unsupported"
    template = (
        "Not started: {reason}. No execution was created and nothing was spent. The purchase ledger claims "
        "each image with a conditional PUT (If-None-Match: *, If-Match) so that two runs or deployments "
        "never buy it twice; this store cannot guarantee that. Upgrade it to a release that honours "
        "conditional writes, or point S3_ENDPOINT_URL / CATALOG_OUTPUT_BUCKET at one that does "
        "(docs/durability.md)."
    )


class OutputCollision(Failure):
    """The output key already holds the result of another source: nothing is bought over it."""

    stage_name = "output"
    kind = "output_collision"
    permanent = True
    template = (
        "Not started: {reason}. No execution was created and nothing was spent; the other source's result "
        "is left as it is. Point this catalog at an output prefix of its own (CATALOG_OUTPUT_PREFIX)."
    )


class SourceMissing(Failure):
    stage_name = "read"
    kind = "source_missing"
    template = (
        "The source object is gone from S3 ({reason}). Nothing was spent; re-upload it or ignore this "
        "partition."
    )


class RejectedByAutoRetouch(Failure):
    stage_name = "upload"
    kind = "rejected_by_autoretouch"
    template = "AutoRetouch refused the upload ({reason}). Check the file; nothing was spent."


class HashMismatch(Failure):
    stage_name = "upload"


class BudgetRefused(Failure):
    """The projected spend does not fit the balance or the budget: refused before any create."""

    stage_name = "budget"
    kind = "budget_refused"
    permanent = True
    template = "Not started: {reason}. No execution was created and nothing was spent."


class ExecutionNotFound(Failure):
    stage_name = "execution"
    permanent = True


class ExecutionFailed(Failure):
    stage_name = "execution"
    kind = "execution_failed"
    permanent = True
    template = (
        "AutoRetouch could not process this image (execution FAILED, not charged). Re-materialize this "
        "partition to retry the same execution once."
    )


class ExecutionPaymentRequired(Failure):
    stage_name = "execution"
    kind = "payment_required"
    permanent = True
    template = (
        "AutoRetouch stopped this image for lack of credits (PAYMENT_REQUIRED). Top up the organization's "
        "balance, then re-materialize this partition: the same execution is retried, not bought again."
    )


class DuplicateContentNotCreated(Failure):
    stage_name = "create"


class ClaimedElsewhere(Failure):
    """Another deployment (or run) claimed this image's purchase and has not recorded its execution yet."""

    stage_name = "create"
    kind = "bought_elsewhere_pending"
    template = (
        "Another run or deployment is buying this image ({reason}). Nothing was bought here; a later run "
        "adopts its execution, or takes the claim over once its owner has ended."
    )


class NoExecution(Failure):
    stage_name = "download"


class ResultUndecodable(Failure):
    stage_name = "download"
