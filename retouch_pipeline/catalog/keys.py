"""S3 object keys <-> Dagster partition keys, collections, and output keys.

Why a mapping at all: Dagster does not validate dynamic partition keys, but the UI and the partition
selection syntax do give some characters a meaning (``...`` separates a range, ``,`` separates keys,
``[ ]`` bracket ranges), control characters break the UI and the tick/run logs, and leading/trailing
whitespace is trimmed by text inputs. S3 keys may hold any of these.

Partition keys
    The relative key (below the source prefix) with every byte outside a conservative safe set written
    as ``~HH`` (uppercase hex of its UTF-8 bytes, ``~`` itself included). The safe set is ASCII letters,
    digits, ``-``, ``_``, ``/``, ``.`` (never two in a row, so no ``..`` or ``...``) and the space
    (never first or last). Non-ASCII is escaped too: it sidesteps Unicode normalisation and
    look-alikes in a key that is an identifier. ``spring-2026/shoes/red shoe.jpg`` stays exactly that.

    A partition key starts with the image's collection, so typing ``spring-2026/`` in the UI's
    partition filter selects one collection. Keys directly under the prefix (or whose first segment is
    empty) belong to :data:`DEFAULT_COLLECTION` and get it as an explicit first segment
    (``photo.jpg`` -> ``_root/photo.jpg``); a real collection literally named ``_root`` is written
    ``~5Froot`` so the two never collide.

    :func:`s3_key_from_partition_key` accepts only canonical keys (``encode(decode(pk)) == pk``), so a
    hand-typed or foreign key fails loudly instead of addressing the wrong object.

Output keys (decision, issue 16)
    :func:`output_key` is the relative path with the result's extension *appended*, never substituted:
    ``shoes/pair.jpg`` -> ``retouched/shoes/pair.jpg.png``, ``shoes/pair.png`` ->
    ``retouched/shoes/pair.png.png``.
    Why always and not only when two sources share a stem: a rule that depends on the neighbours would move
    an existing output the day a second ``pair.*`` is uploaded. Appending is injective (an extension holds
    no dot, so the last segment and the rest are recovered exactly), so two different sources can never
    share an output key, and a sidecar (``<output>.json``) never equals an image key. The path stays
    readable but can never leave the output prefix: empty, ``.`` and ``..`` segments are rewritten
    bijectively, and control characters, ``\\`` and ``~`` are ``~HH``-escaped (tools that mirror S3 to a
    file system would otherwise interpret them). :func:`legacy_output_key` is the scheme before issue 16
    (extension replaced), read only by the migration (``retouch-pipeline migrate-outputs``).
"""

from __future__ import annotations

import re

DEFAULT_COLLECTION = "_root"
"""Collection of objects directly under the source prefix (no collection folder)."""

S3_MAX_KEY_BYTES = 1024

_ESCAPE = "~"
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_/")
_ESCAPE_RE = re.compile(r"(?:~[0-9A-F]{2})+")
_EXTENSION_RE = re.compile(r"[A-Za-z0-9]{1,16}")
_SPECIAL_SEGMENT_RE = re.compile(r"_*\.{0,2}")  # "", ".", ".." and their "_"-prefixed images


def _hex(char: str) -> str:
    return "".join(f"~{b:02X}" for b in char.encode("utf-8"))


def _escape(text: str) -> str:
    """Escape ``text`` into the partition-key alphabet (see module docstring)."""
    out: list[str] = []
    last = len(text) - 1
    for i, char in enumerate(text):
        literal = (
            char in _SAFE or (char == "." and not (out and out[-1] == ".")) or (char == " " and 0 < i < last)
        )
        out.append(char if literal else _hex(char))
    return "".join(out)


def _unescape(text: str) -> str:
    def decode(match: re.Match[str]) -> str:
        return bytes.fromhex(match.group(0).replace(_ESCAPE, "")).decode("utf-8")

    return _ESCAPE_RE.sub(decode, text)


def collection_of(relative_key: str) -> str:
    """The collection of an object: its first path segment, or :data:`DEFAULT_COLLECTION`.

    Objects directly under the source prefix, or whose key starts with ``/``, have no collection folder.
    """
    head, sep, _ = relative_key.partition("/")
    return head if sep and head else DEFAULT_COLLECTION


def _has_own_collection(relative_key: str) -> bool:
    head, sep, _ = relative_key.partition("/")
    return bool(sep and head)


def partition_key_for(relative_key: str) -> str:
    """The Dagster partition key of an S3 key relative to the source prefix (reversible, UI-safe)."""
    if not relative_key:
        raise ValueError("an empty relative key is the prefix itself, not an object")
    if not _has_own_collection(relative_key):
        return f"{DEFAULT_COLLECTION}/{_escape(relative_key)}"
    escaped = _escape(relative_key)
    if escaped.startswith(DEFAULT_COLLECTION + "/"):
        # A real collection named like the default one: escape its first char to keep decoding unambiguous.
        escaped = _hex(DEFAULT_COLLECTION[0]) + escaped[1:]
    return escaped


def s3_key_from_partition_key(partition_key: str) -> str:
    """Inverse of :func:`partition_key_for`; raises ``ValueError`` for a key it would not produce."""
    try:
        if partition_key.startswith(DEFAULT_COLLECTION + "/"):
            relative_key = _unescape(partition_key[len(DEFAULT_COLLECTION) + 1 :])
        else:
            relative_key = _unescape(partition_key)
    except UnicodeDecodeError as exc:
        raise ValueError(f"not a catalog partition key (bad escape): {partition_key!r}") from exc
    if not relative_key or partition_key_for(relative_key) != partition_key:
        raise ValueError(f"not a canonical catalog partition key: {partition_key!r}")
    return relative_key


def collection_of_partition_key(partition_key: str) -> str:
    """The collection of a partition key (the decoded first segment)."""
    return collection_of(s3_key_from_partition_key(partition_key))


def _escape_output_segment(segment: str) -> str:
    escaped = "".join(
        _hex(char) if char in "\\~" or ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 else char
        for char in segment
    )
    # Bijective rewrite: "", ".", ".." (and names made of "_" then up to two dots) gain one "_".
    return "_" + escaped if _SPECIAL_SEGMENT_RE.fullmatch(escaped) else escaped


def output_key(output_prefix: str, relative_key: str, extension: str) -> str:
    """Where the result of ``relative_key`` goes: ``<output_prefix>/<relative path>.<extension>``.

    The source's own extension is kept (``a.jpg`` -> ``a.jpg.png``): distinct source keys never share an
    output (module docstring). The result always lies strictly below ``output_prefix``.
    """
    return _output_key(output_prefix, relative_key, extension, keep_source_extension=True)


def legacy_output_key(output_prefix: str, relative_key: str, extension: str) -> str:
    """The key the pipeline wrote before issue 16 (``a.jpg`` -> ``a.png``); for the migration only."""
    return _output_key(output_prefix, relative_key, extension, keep_source_extension=False)


_WRITTEN_SPECIAL_RE = re.compile(r"_+\.{0,2}")  # a special segment as `_escape_output_segment` writes it


def _unescape_output_segment(segment: str) -> str:
    return _unescape(segment[1:] if _WRITTEN_SPECIAL_RE.fullmatch(segment) else segment)


def source_of_output_key(output_prefix: str, key: str) -> str | None:
    """The relative source key whose result :func:`output_key` writes at `key` (None: not such a key).

    The inverse of :func:`output_key` (both rewrites are bijective). An output written under the legacy
    scheme decodes to a source that usually does not exist: callers confirm with the sidecar.
    """
    prefix = output_prefix.strip("/")
    rest = key[len(prefix) + 1 :] if prefix else key
    if (prefix and not key.startswith(prefix + "/")) or "." not in rest.rsplit("/", 1)[-1]:
        return None
    stem = rest.rsplit(".", 1)[0]
    try:
        relative = "/".join(_unescape_output_segment(s) for s in stem.split("/"))
    except UnicodeDecodeError:
        return None
    return relative if relative and output_key(prefix, relative, rest.rsplit(".", 1)[1]) == key else None


def _output_key(output_prefix: str, relative_key: str, extension: str, *, keep_source_extension: bool) -> str:
    if not _EXTENSION_RE.fullmatch(extension.removeprefix(".")):
        raise ValueError(f"not a file extension: {extension!r}")
    if not relative_key:
        raise ValueError("an empty relative key is the prefix itself, not an object")
    extension = extension.removeprefix(".")
    *folders, name = relative_key.split("/")
    if not keep_source_extension:
        dot = name.rfind(".")
        if dot > 0:
            name = name[:dot]
    segments = [_escape_output_segment(s) for s in folders]
    segments.append(_escape_output_segment(name) + "." + extension)
    prefix = output_prefix.strip("/")
    key = "/".join([prefix, *segments] if prefix else segments)
    if len(key.encode("utf-8")) > S3_MAX_KEY_BYTES:
        raise ValueError(f"output key longer than S3's {S3_MAX_KEY_BYTES} bytes for {relative_key!r}")
    return key
