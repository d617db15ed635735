"""Job locations: URIs parsed to a container and a key prefix, outputs named from inputs."""

from __future__ import annotations

import pytest

from topology.jobs.locations import (
    Location,
    LocationInvalid,
    NameClash,
    is_input_key,
    output_names,
    output_relative,
    parse_location,
    relative_key,
)


@pytest.mark.parametrize(("uri", "expected"), [
    ("s3://photos/in/", Location("s3", "photos", "in/")),
    ("s3://photos", Location("s3", "photos", "")),
    ("s3://photos/in/cat.jpg", Location("s3", "photos", "in/cat.jpg")),
    ("file:///data/in/", Location("file", "", "data/in/")),
    ("file://localhost/data/x.png", Location("file", "", "data/x.png")),
    ("S3://photos/a%20b/", Location("s3", "photos", "a b/")),
])
def test_parses_s3_and_file_uris_into_container_and_prefix(uri: str, expected: Location) -> None:
    assert parse_location(uri, field="input") == expected


@pytest.mark.parametrize(("uri", "words"), [
    ("", "give a location"),
    ("http://x/y", "scheme must be s3://"),
    ("s3://A_Bad_Bucket/", "not a bucket name"),
    ("file://host/data/", "three slashes"),
    ("s3://photos/a/../b/", "'..' path segments"),
    ("s3://photos/in/?region=eu", "no query"),
    ("s3://photos/_stepchain/x/", "jobs' own state"),
])
def test_refuses_unusable_uris_naming_the_field(uri: str, words: str) -> None:
    with pytest.raises(LocationInvalid) as caught:
        parse_location(uri, field="output")
    assert caught.value.field == "output"
    assert words in str(caught.value)


def test_round_trips_the_uri_and_reads_a_key_as_a_prefix() -> None:
    assert parse_location("s3://bk1/a/b", field="input").as_prefix().uri == "s3://bk1/a/b/"
    assert parse_location("file:///d/e/", field="input").uri == "file:///d/e/"
    out = parse_location("s3://bk1/out/", field="output")
    assert out.state_key("j1", "manifest.json") == "out/_stepchain/j1/manifest.json"
    assert out.contains(parse_location("s3://bk1/out/x/", field="input"))
    assert not out.contains(parse_location("s3://bk2/out/x/", field="input"))


def test_inputs_are_every_object_but_markers_hidden_files_and_job_state() -> None:
    loc = parse_location("s3://bk1/in/", field="input")
    assert is_input_key(loc, "in/a.jpg")
    assert is_input_key(loc, "in/sub/notes.txt")  # a non-image is an input that will fail
    assert not is_input_key(loc, "in/sub/")
    assert not is_input_key(loc, "in/.hidden.png")
    assert not is_input_key(loc, "in/_stepchain/j1/manifest.json")
    single = parse_location("s3://bk1/in/cat.jpg", field="input")
    assert relative_key(single, "in/cat.jpg") == "cat.jpg"


@pytest.mark.parametrize(("relative", "encoding", "expected"), [
    ("a/cat.jpeg", "same", "a/cat.jpeg"),
    ("cat.JPG", "same", "cat.JPG"),
    ("scan.tif", "same", "scan.png"),
    ("x.png", "jpeg", "x.jpg"),
    ("arr.npy", "same", "arr.npy"),
    ("noext", "png", "noext.png"),
])
def test_names_outputs_from_inputs_with_the_encodings_suffix(relative: str, encoding: str,
                                                            expected: str) -> None:
    assert output_relative(relative, encoding) == expected


def test_refuses_two_inputs_that_would_share_an_output() -> None:
    assert output_names(["a.jpg", "b.png"], "png") == ["a.png", "b.png"]
    with pytest.raises(NameClash) as caught:
        output_names(["a.jpg", "a.tif"], "png")
    assert "'a.jpg' and 'a.tif' would both be written as 'a.png'" in str(caught.value)
