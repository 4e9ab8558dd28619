"""Backup requests from the HTTP API's JSON body and from the wire protocol's
backup message: one parser, every accepted and refused request."""

from __future__ import annotations

import pytest

from rustydb_client.protocol import events
from rustydb_server.backup.request import (
    WIRE_FIELDS,
    BackupRequest,
    BackupRequestError,
    parse_request,
    wire_fields,
)
from rustydb_server.container.format import BackupType

SETTINGS = {"backup_compression": "zstd", "backup_threads": 3, "archive_mode": False}
ARCHIVING = {**SETTINGS, "archive_mode": True}
BASE = {"backup_id": "b1", "end_lsn": 42}

PITR_NEEDS_ARCHIVING = (
    "a pitr-base backup needs WAL archiving: run ALTER SYSTEM SET archive_mode = on; "
    "and ALTER SYSTEM SET archive_dest = '/path'; first"
)
NAMED_TWICE = 'database "rustydb" is named more than once in databases; name each database once'
UNKNOWN_TYPE = "unknown backup_type 'weekly'; use one of full, incremental, differential, pitr-base"


@pytest.mark.parametrize(
    "body,settings,expected",
    [
        ({}, SETTINGS, BackupRequest(BackupType.FULL, None, "none", False, 3)),
        ({"backup_type": "full"}, SETTINGS, BackupRequest(BackupType.FULL, None, "none", False, 3)),
        ({"backup_type": "incremental"}, SETTINGS, BackupRequest(BackupType.INCREMENTAL, threads=3)),
        ({"backup_type": "differential"}, SETTINGS, BackupRequest(BackupType.DIFFERENTIAL, threads=3)),
        ({"backup_type": "pitr-base"}, ARCHIVING, BackupRequest(BackupType.PITR_BASE, threads=3)),
        ({"compression": True}, SETTINGS, BackupRequest(codec="zstd", threads=3)),
        ({"compression": False}, SETTINGS, BackupRequest(codec="none", threads=3)),
        ({"compression": "snappy"}, SETTINGS, BackupRequest(codec="snappy", threads=3)),
        ({"encryption": True}, SETTINGS, BackupRequest(encrypt=True, threads=3)),
        ({"databases": ["rustydb", "sales"]}, SETTINGS, BackupRequest(databases=["rustydb", "sales"], threads=3)),
        ({"threads": 1}, SETTINGS, BackupRequest(threads=1)),
        ({"threads": 64}, SETTINGS, BackupRequest(threads=64)),
    ],
)
def test_api_requests_accepted(body, settings, expected):
    request = parse_request(body, settings)
    assert request == expected
    assert request.backup_type is expected.backup_type


@pytest.mark.parametrize(
    "body,settings,message,status",
    [
        ([1, 2], SETTINGS, "the request body must be a JSON object", 400),
        ("full", SETTINGS, "the request body must be a JSON object", 400),
        (
            {"backup_type": "full", "colour": "blue"},
            SETTINGS,
            "unknown field(s) colour; allowed: backup_type, compression, databases, encryption, threads, wait",
            422,
        ),
        (
            {"base_backup": BASE},
            SETTINGS,
            "unknown field(s) base_backup; allowed: backup_type, compression, databases, encryption, threads, wait",
            422,
        ),
        ({"backup_type": 7}, SETTINGS, "backup_type must be a string", 422),
        ({"wait": "yes"}, SETTINGS, "wait must be true or false", 422),
        ({"backup_type": "weekly"}, SETTINGS, UNKNOWN_TYPE, 422),
        ({"backup_type": "wal-segment"}, SETTINGS, "unknown backup_type 'wal-segment'", 422),
        ({"backup_type": "pitr-base"}, SETTINGS, PITR_NEEDS_ARCHIVING, 422),
        ({"compression": "gzip"}, SETTINGS, "compression must be true, false or one of lz4, zstd, snappy, none", 422),
        ({"compression": 1}, SETTINGS, "compression must be true, false or one of lz4, zstd, snappy, none", 422),
        ({"encryption": "yes"}, SETTINGS, "encryption must be true or false", 422),
        ({"databases": []}, SETTINGS, "databases must be a non-empty list of database names", 422),
        ({"databases": "rustydb"}, SETTINGS, "databases must be a non-empty list of database names", 422),
        ({"databases": ["a", 1]}, SETTINGS, "databases must be a non-empty list of database names", 422),
        ({"databases": ["rustydb", "rustydb"]}, SETTINGS, NAMED_TWICE, 422),
        ({"databases": ["sales", "rustydb", "sales"]}, SETTINGS, NAMED_TWICE.replace("rustydb", "sales"), 422),
        ({"threads": 0}, SETTINGS, "threads must be an integer from 1 to 64", 422),
        ({"threads": 65}, SETTINGS, "threads must be an integer from 1 to 64", 422),
        ({"threads": True}, SETTINGS, "threads must be an integer from 1 to 64", 422),
        ({"threads": "2"}, SETTINGS, "threads must be an integer from 1 to 64", 422),
    ],
)
def test_api_requests_refused(body, settings, message, status):
    with pytest.raises(BackupRequestError) as info:
        parse_request(body, settings)
    assert message in str(info.value)
    assert info.value.status == status


@pytest.mark.parametrize(
    "event,settings,expected",
    [
        (events.BackupRequested(), SETTINGS, BackupRequest(BackupType.FULL, threads=3)),
        (events.BackupRequested("differential"), SETTINGS, BackupRequest(BackupType.DIFFERENTIAL, threads=3)),
        (events.BackupRequested("pitr-base"), ARCHIVING, BackupRequest(BackupType.PITR_BASE, threads=3)),
        (
            events.BackupRequested("incremental", ["sales"], BASE),
            SETTINGS,
            BackupRequest(BackupType.INCREMENTAL, ["sales"], threads=3, base_backup=BASE),
        ),
        # The protocol has always read an empty list as every database.
        (events.BackupRequested("full", []), SETTINGS, BackupRequest(BackupType.FULL, None, threads=3)),
    ],
)
def test_wire_requests_accepted(event, settings, expected):
    assert parse_request(wire_fields(event), settings, WIRE_FIELDS) == expected


@pytest.mark.parametrize(
    "event,settings,message",
    [
        (events.BackupRequested("weekly"), SETTINGS, UNKNOWN_TYPE),
        (events.BackupRequested("pitr-base"), SETTINGS, PITR_NEEDS_ARCHIVING),
        (events.BackupRequested("full", ["rustydb", "rustydb"]), SETTINGS, NAMED_TWICE),
    ],
)
def test_wire_requests_refused_as_the_api_refuses_them(event, settings, message):
    with pytest.raises(BackupRequestError) as wire:
        parse_request(wire_fields(event), settings, WIRE_FIELDS)
    body = {"backup_type": event.backup_type}
    if event.databases:
        body["databases"] = event.databases
    with pytest.raises(BackupRequestError) as api:
        parse_request(body, settings)
    assert str(wire.value) == str(api.value) == message


def test_the_wire_accepts_only_its_own_fields():
    with pytest.raises(BackupRequestError) as info:
        parse_request({"threads": 4}, SETTINGS, WIRE_FIELDS)
    assert str(info.value) == "unknown field(s) threads; allowed: backup_type, base_backup, databases"
