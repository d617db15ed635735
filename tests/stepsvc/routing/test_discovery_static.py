"""Static discovery: a JSON file of step id -> address, reloaded when it changes."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from discovery_fixtures import wait_for

from stepsvc.routing.discovery import (
    Discovery,
    StaticDiscovery,
    make_discovery,
    parse_static_mapping,
    write_static_discovery,
)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "discovery.json"


@pytest.fixture
def discovery(path: Path) -> Iterator[StaticDiscovery]:
    d = StaticDiscovery(path)
    d.start()
    yield d
    d.close()


def test_reads_the_file_on_start(path: Path) -> None:
    path.write_text('{"1": "127.0.0.1:50052", "2": "127.0.0.1:50053"}')
    d = StaticDiscovery(path)
    d.start()
    assert d.active() == {1: "127.0.0.1:50052", 2: "127.0.0.1:50053"}


def test_change_is_seen_within_a_second(path: Path, discovery: StaticDiscovery) -> None:
    write_static_discovery(path, {1: "127.0.0.1:50052"})
    assert wait_for(lambda: discovery.active() == {1: "127.0.0.1:50052"}, timeout=1.0)
    write_static_discovery(path, {1: "127.0.0.1:50052", 3: "127.0.0.1:50054"})
    assert wait_for(lambda: 3 in discovery.active(), timeout=1.0)
    write_static_discovery(path, {3: "127.0.0.1:50054"})
    assert wait_for(lambda: discovery.active() == {3: "127.0.0.1:50054"}, timeout=1.0)


def test_step_missing_from_file_is_inactive(path: Path, discovery: StaticDiscovery) -> None:
    write_static_discovery(path, {0: "127.0.0.1:50051", 2: "127.0.0.1:50053"})
    assert wait_for(lambda: bool(discovery.active()))
    assert 1 not in discovery.active()


def test_missing_file_means_no_active_step_yet(path: Path,
                                                discovery: StaticDiscovery) -> None:
    assert discovery.active() == {}
    write_static_discovery(path, {4: "127.0.0.1:50055"})
    assert wait_for(lambda: discovery.active() == {4: "127.0.0.1:50055"})


def test_corrupt_file_keeps_last_good_map_and_warns_once(
        path: Path, discovery: StaticDiscovery, caplog: pytest.LogCaptureFixture) -> None:
    write_static_discovery(path, {1: "127.0.0.1:50052"})
    assert wait_for(lambda: discovery.active() == {1: "127.0.0.1:50052"})
    caplog.set_level(logging.WARNING, logger="stepsvc.routing.discovery")
    path.write_text('{"1": "127.0.0.1:500')  # a writer that died half-way
    time.sleep(0.6)  # several check intervals
    for _ in range(3):
        assert discovery.active() == {1: "127.0.0.1:50052"}
        time.sleep(0.25)
    warnings = [r for r in caplog.records if "not valid JSON" in r.getMessage()]
    assert len(warnings) == 1
    write_static_discovery(path, {2: "127.0.0.1:50053"})
    assert wait_for(lambda: discovery.active() == {2: "127.0.0.1:50053"})


def test_deleted_file_keeps_last_good_map(path: Path, discovery: StaticDiscovery) -> None:
    write_static_discovery(path, {1: "127.0.0.1:50052"})
    assert wait_for(lambda: discovery.active() == {1: "127.0.0.1:50052"})
    path.unlink()
    time.sleep(0.5)
    assert discovery.active() == {1: "127.0.0.1:50052"}


def test_active_returns_a_snapshot(path: Path, discovery: StaticDiscovery) -> None:
    write_static_discovery(path, {1: "127.0.0.1:50052"})
    assert wait_for(lambda: bool(discovery.active()))
    discovery.active().clear()
    assert discovery.active() == {1: "127.0.0.1:50052"}


def test_write_is_atomic_json_with_string_keys(path: Path) -> None:
    write_static_discovery(path, {2: "127.0.0.1:50053", 0: "127.0.0.1:50051"})
    assert json.loads(path.read_text()) == {"0": "127.0.0.1:50051", "2": "127.0.0.1:50053"}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_write_rejects_an_address_without_port(path: Path) -> None:
    with pytest.raises(ValueError, match="step 1: address must be \"host:port\""):
        write_static_discovery(path, {1: "127.0.0.1"})
    assert not path.exists()


@pytest.mark.parametrize(("text", "problem"), [
    ("[1, 2]", "must be a JSON object"),
    ('{"one": "127.0.0.1:1"}', "key 'one' must be a step id"),
    ('{"-1": "127.0.0.1:1"}', "key '-1' must be a step id"),
    ('{"\u0663": "127.0.0.1:1"}', "key '\u0663' must be a step id"),  # Arabic-Indic 3
    ('{"\uff11": "127.0.0.1:1"}', "key '\uff11' must be a step id"),  # fullwidth 1
    ('{"1": "127.0.0.1:\u0665\u0660"}', "step 1: address must be \"host:port\""),
    ('{"1": 50052}', "step 1: address must be \"host:port\""),
    ('{"1": "127.0.0.1:0"}', "step 1: address must be \"host:port\""),
])
def test_parse_names_the_bad_entry(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_static_mapping(text)


def test_a_step_id_in_non_ascii_digits_is_not_taken_as_that_step(
        path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path.write_text('{"\u0663": "127.0.0.1:50053"}', encoding="utf-8")  # "٣", not 3
    discovery = StaticDiscovery(path)
    with caplog.at_level(logging.WARNING, logger="stepsvc.routing.discovery"):
        discovery.start()
        assert discovery.active() == {}
    discovery.close()
    assert "key '\u0663' must be a step id" in caplog.text


def test_make_discovery_static(path: Path) -> None:
    write_static_discovery(path, {1: "127.0.0.1:50052"})
    d = make_discovery(f"static:{path}", "demo")
    assert isinstance(d, StaticDiscovery)
    assert isinstance(d, Discovery)
    d.start()
    d.start()  # idempotent
    assert d.active() == {1: "127.0.0.1:50052"}
    d.close()


@pytest.mark.parametrize(("spec", "problem"), [
    ("static:", "needs a file path"),
    ("etcd", "unknown discovery 'etcd'; use 'kubernetes' or 'static:FILE'"),
    ("", "unknown discovery ''"),
])
def test_make_discovery_rejects_unknown_specs(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        make_discovery(spec, "demo")


def test_a_step_with_replicas_lists_them_and_is_one_round_robin_target(path: Path) -> None:
    write_static_discovery(path, {1: ["127.0.0.1:50052", "127.0.0.1:50062"],
                                  2: "127.0.0.1:50053"})
    d = StaticDiscovery(path)
    d.start()
    assert d.active() == {1: "ipv4:127.0.0.1:50052,127.0.0.1:50062", 2: "127.0.0.1:50053"}
    assert json.loads(path.read_text())["1"] == ["127.0.0.1:50052", "127.0.0.1:50062"]


@pytest.mark.parametrize(("text", "problem"), [
    ('{"1": []}', "non-empty list"),
    ('{"1": ["127.0.0.1:1", "127.0.0.1"]}', "every replica address must be"),
    ('{"1": ["localhost:1", "127.0.0.1:2"]}', "IP addresses of one family"),
])
def test_a_bad_replica_list_is_refused_naming_the_step(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=f"step 1: .*{problem}"):
        parse_static_mapping(text)
