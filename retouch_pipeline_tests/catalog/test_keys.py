"""Property tests for the S3 key <-> partition key mapping and output keys."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retouch_pipeline.catalog.keys import (
    DEFAULT_COLLECTION,
    collection_of,
    collection_of_partition_key,
    legacy_output_key,
    output_key,
    partition_key_for,
    s3_key_from_partition_key,
    source_of_output_key,
)

# Any Unicode text S3 could hold (no lone surrogates: not encodable in UTF-8), biased towards the
# characters that matter here.
_hostile = st.sampled_from(list("./ ~%+,[]\n\r\t\x00\x7f_-\\\u00e9\u65e5\U0001f600:*?#&=\"'"))
_chars = st.one_of(_hostile, st.characters(exclude_categories=("Cs",)))
relative_keys = st.lists(_chars, min_size=1, max_size=60).map("".join)

_UNSAFE_IN_PARTITION = set(",[]*?#%+\\\"'<>|^`{}=&:;!@$")


@settings(max_examples=600)
@given(relative_keys)
def test_partition_key_round_trips_and_is_ui_safe(relative_key: str) -> None:
    pk = partition_key_for(relative_key)
    assert s3_key_from_partition_key(pk) == relative_key
    assert "..." not in pk and ".." not in pk
    assert pk.isascii() and pk.isprintable()
    assert pk == pk.strip()
    assert not (_UNSAFE_IN_PARTITION & set(pk))
    # The partition key starts with its collection, so the UI's partition filter can select one.
    collection = collection_of(relative_key)
    first_segment = pk.split("/", 1)[0]
    if collection == DEFAULT_COLLECTION:
        assert first_segment == DEFAULT_COLLECTION
    else:
        assert s3_key_from_partition_key(first_segment + "/x") == collection + "/x"
    assert collection_of_partition_key(pk) == collection_of(relative_key)


@given(relative_keys, relative_keys)
def test_partition_keys_are_injective(a: str, b: str) -> None:
    if a != b:
        assert partition_key_for(a) != partition_key_for(b)


@pytest.mark.parametrize(
    ("relative_key", "partition_key"),
    [
        ("spring-2026/shoes/red shoe.jpg", "spring-2026/shoes/red shoe.jpg"),
        ("photo.jpg", "_root/photo.jpg"),
        ("/abs.jpg", "_root//abs.jpg"),
        ("_root/x.jpg", "~5Froot/x.jpg"),
        ("a/../b...jpg", "a/.~2E/b.~2E.jpg"),
        (" lead/x.jpg", "~20lead/x.jpg"),
        ("a/x, [1].jpg", "a/x~2C ~5B1~5D.jpg"),
        ("a/ü.jpg", "a/~C3~BC.jpg"),
        ("a/new\nline.jpg", "a/new~0Aline.jpg"),
        ("a/100%+~.jpg", "a/100~25~2B~7E.jpg"),
    ],
)
def test_examples_stay_readable(relative_key: str, partition_key: str) -> None:
    assert partition_key_for(relative_key) == partition_key
    assert s3_key_from_partition_key(partition_key) == relative_key


@pytest.mark.parametrize(
    "bad", ["", "a/~2e.jpg", "a/~41.jpg", "a/~C3.jpg", "_root", "a/ x/ ", "a/b...c", "~5Fother/x"]
)
def test_non_canonical_partition_keys_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        s3_key_from_partition_key(bad)


def test_collection_of() -> None:
    assert collection_of("spring-2026/shoes/red.jpg") == "spring-2026"
    assert collection_of("red.jpg") == DEFAULT_COLLECTION
    assert collection_of("/red.jpg") == DEFAULT_COLLECTION
    assert collection_of("c/") == "c"


prefixes = st.sampled_from(["out", "retouched/", "/a/b/", "", "x/y"])


@settings(max_examples=600)
@given(prefixes, relative_keys)
def test_output_key_never_escapes_the_prefix(prefix: str, relative_key: str) -> None:
    key = output_key(prefix, relative_key, "png")
    base = prefix.strip("/")
    rest = key[len(base) + 1 :] if base else key
    if base:
        assert key.startswith(base + "/")
    segments = rest.split("/")
    assert all(s not in ("", ".", "..") for s in segments)
    assert "\\" not in rest and all(ord(c) >= 0x20 and c != "\x7f" for c in rest)
    normalized = posixpath.normpath("/" + key)
    assert normalized.startswith(posixpath.normpath("/" + base) + ("/" if base else ""))
    assert key.endswith(".png")


extensions = st.sampled_from(["png", "jpg", "webp", "tiff"])


@settings(max_examples=600)
@given(relative_keys, relative_keys, extensions, extensions)
def test_output_keys_never_collide(a: str, b: str, ext_a: str, ext_b: str) -> None:
    """Two different sources never share an output, whatever their names and result formats."""
    if a != b:
        assert output_key("o", a, ext_a) != output_key("o", b, ext_b)
        assert output_key("o", a, ext_a) + ".json" != output_key("o", b, ext_b)  # nor a sidecar's key


@settings(max_examples=600)
@given(prefixes, relative_keys, extensions)
def test_an_output_key_names_its_source(prefix: str, relative_key: str, extension: str) -> None:
    assert source_of_output_key(prefix, output_key(prefix, relative_key, extension)) == relative_key


def test_the_pairs_that_collided_before_issue_16_do_not() -> None:
    pairs = [("pair.jpg", "pair.png"), ("astronaut.jpg", "astronaut.tif"), ("coffee.jpg", "coffee.webp")]
    for a, b in pairs:
        assert legacy_output_key("o", a, "png") == legacy_output_key("o", b, "png")
        assert output_key("o", a, "png") == f"o/{a}.png" != output_key("o", b, "png") == f"o/{b}.png"


@pytest.mark.parametrize(
    ("relative_key", "expected"),
    [
        ("spring-2026/shoes/red shoe.jpg", "out/spring-2026/shoes/red shoe.jpg.png"),
        ("../../etc/passwd", "out/_../_../etc/passwd.png"),
        ("/abs//x.jpg", "out/_/abs/_/x.jpg.png"),
        ("a\\..\\b.jpg", "out/a~5C..~5Cb.jpg.png"),
        (".hidden", "out/.hidden.png"),
        ("c/..", "out/c/_...png"),
    ],
)
def test_output_key_examples(relative_key: str, expected: str) -> None:
    assert output_key("out/", relative_key, ".png") == expected


@pytest.mark.parametrize(
    ("relative_key", "expected"),
    [
        ("spring-2026/shoes/red shoe.jpg", "out/spring-2026/shoes/red shoe.png"),
        (".hidden", "out/.hidden.png"),
    ],
)
def test_legacy_output_key_examples(relative_key: str, expected: str) -> None:
    assert legacy_output_key("out/", relative_key, ".png") == expected


def test_output_key_rejects_bad_extensions() -> None:
    with pytest.raises(ValueError):
        output_key("out", "a.jpg", "../png")
