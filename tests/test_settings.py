"""The settings registry: parsing, formatting, precedence, the auto file and reload."""

from __future__ import annotations

import os
import tomllib

import pytest

from rustydb_server import settings as st
from rustydb_server.fileops import FileOps
from rustydb_server.settings import (
    REGISTRY,
    SettingError,
    Settings,
    format_value,
    parse_value,
    reset_auto,
    set_auto,
    show_all,
)

# ---------------------------------------------------------------- values


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_default_parses_and_round_trips_through_show(name):
    setting = REGISTRY[name]
    assert parse_value(name, setting.default) == setting.default
    # What SHOW prints must be accepted back by ALTER SYSTEM SET.
    assert parse_value(name, format_value(name, setting.default)) == setting.default


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("on", True),
        ("OFF", False),
        ("True", True),
        ("false", False),
        ("yes", True),
        ("No", False),
        ("1", True),
        ("0", False),
        (True, True),
        (0, False),
        (" on ", True),
    ],
)
def test_bool_words(raw, expected):
    assert parse_value("archive_mode", raw) is expected


@pytest.mark.parametrize(
    "name, raw, expected",
    [
        ("archive_timeout", "60s", 60),
        ("archive_timeout", "1min", 60),
        ("archive_timeout", "2h", 7200),
        ("archive_timeout", "1d", 86400),
        ("archive_timeout", "90", 90),  # bare number: the setting's base unit
        ("archive_timeout", 90, 90),
        ("archive_timeout", "120000ms", 120),
        ("archive_timeout", "60 S", 60),
        ("statement_timeout", "1.5s", 1500),
        ("statement_timeout", "250", 250),
        ("statement_timeout", "0", 0),
        ("checkpoint_timeout", "5min", 300),
        ("checkpoint_wal_size", "64MB", 64 * 1024**2),
        ("checkpoint_wal_size", "1GB", 1024**3),
        ("checkpoint_wal_size", "512kB", 512 * 1024),
        ("checkpoint_wal_size", "4096", 4096),
        ("checkpoint_wal_size", "1.5kb", 1536),
        ("wal_segment_size", "64kB", 64 * 1024),
        ("wal_segment_size", "1GB", 1024**3),
        ("port", "5433", 5433),
        ("port", 65535, 65535),
        ("http_port", "0", 0),
        ("backup_threads", "64", 64),
        ("archive_compression", "ZSTD", "zstd"),
        ("archive_compression", "none", "none"),
        ("log_level", "debug", "debug"),
        ("listen_address", "0.0.0.0", "0.0.0.0"),
        ("archive_dest", "/var/lib/rusty-db/archive", "/var/lib/rusty-db/archive"),
    ],
)
def test_good_values(name, raw, expected):
    assert parse_value(name, raw) == expected


@pytest.mark.parametrize(
    "name, raw",
    [
        ("port", "0"),
        ("port", "65536"),
        ("port", "x"),
        ("port", "54.5"),
        ("port", True),
        ("http_port", "-1"),
        ("max_connections", "0"),
        ("max_connections", "10001"),
        ("backup_threads", "65"),
        ("archive_timeout", "0"),  # min 1s
        ("archive_timeout", "500ms"),  # not a whole number of seconds
        ("archive_timeout", "10 parsecs"),  # wrong unit
        ("archive_timeout", "10MB"),  # a size unit on a duration
        ("archive_timeout", "-5s"),
        ("checkpoint_timeout", "0s"),
        ("statement_timeout", "0.5ms"),
        ("checkpoint_wal_size", "64Mbit"),
        ("checkpoint_wal_size", "10s"),  # a duration unit on a size
        ("checkpoint_wal_size", "0"),
        ("wal_keep_size", "-1MB"),
        ("wal_segment_size", "3MB"),  # not a power of two
        ("wal_segment_size", "32kB"),  # below 64kB
        ("wal_segment_size", "2GB"),  # above 1GB
        ("archive_mode", "maybe"),
        ("archive_mode", 2),
        ("archive_mode", "2"),
        ("archive_compression", "gzip"),
        ("backup_compression", "none"),
        ("log_format", "xml"),
        ("log_level", "trace"),
        ("archive_dest", 5),
        ("listen_address", 127),
        ("archive_dest", "/tmp/a\0b"),
    ],
)
def test_bad_values_are_rejected_naming_the_setting(name, raw):
    with pytest.raises(SettingError) as e:
        parse_value(name, raw)
    assert name in str(e.value)


def test_range_error_states_the_range():
    with pytest.raises(SettingError, match="from 1 to 65535"):
        parse_value("port", "70000")
    with pytest.raises(SettingError, match="lz4, zstd, snappy, none"):
        parse_value("archive_compression", "gzip")


def test_unknown_setting_suggests_close_matches():
    with pytest.raises(SettingError) as e:
        parse_value("archive_mod", "on")
    assert "archive_mode" in str(e.value)
    with pytest.raises(SettingError, match="unknown setting 'zzzz'"):
        parse_value("zzzz", "1")


def test_setting_names_are_case_insensitive():
    assert parse_value("Archive_Mode", "on") is True


@pytest.mark.parametrize(
    "name, value, shown",
    [
        ("archive_mode", True, "on"),
        ("archive_mode", False, "off"),
        ("archive_timeout", 60, "60s"),
        ("statement_timeout", 1500, "1500ms"),
        ("statement_timeout", 0, "0"),
        ("wal_segment_size", 16 * 1024**2, "16MB"),
        ("checkpoint_wal_size", 1024**3, "1GB"),
        ("checkpoint_wal_size", 1536, "1536B"),
        ("checkpoint_wal_size", 1024 * 3, "3kB"),
        ("port", 5432, "5432"),
        ("archive_compression", "zstd", "zstd"),
    ],
)
def test_format_value(name, value, shown):
    assert format_value(name, value) == shown


def test_to_seconds_converts_from_the_base_unit():
    assert st.to_seconds("statement_timeout", 1500) == 1.5
    assert st.to_seconds("shutdown_timeout", 30) == 30
    with pytest.raises(SettingError):
        st.to_seconds("port", 1)


def test_registry_is_consistent():
    for name, s in REGISTRY.items():
        assert s.name == name and name == name.lower()
        assert s.type in st.TYPES
        assert s.context in (st.LIVE, st.RESTART)
        assert s.description
        if s.type == "enum":
            assert s.default in s.choices
        if s.type == "duration":
            assert s.unit in st.DURATION_UNITS_MS


# ---------------------------------------------------------------- precedence


def write(path, text):
    path.write_text(text)
    return str(path)


def test_defaults_when_nothing_is_configured(tmp_path):
    s = Settings.load(None, str(tmp_path / "data"), {})
    assert s["port"] == 5432
    assert s.source("port") == st.SOURCE_DEFAULT
    assert s["data_dir"] == str(tmp_path / "data")
    assert s.source("data_dir") == st.SOURCE_CLI


def test_precedence_default_config_auto_cli(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    config = write(
        tmp_path / "rustydb.toml",
        f'data_dir = "{data}"\nport = 6000\nhttp_port = 6001\nmax_connections = 7\narchive_timeout = "2min"\n',
    )
    set_auto(str(data), "http_port", "7001")
    set_auto(str(data), "max_connections", "8")
    s = Settings.load(config, None, {"max_connections": 9, "port": None})
    assert (s["backup_threads"], s.source("backup_threads")) == (2, st.SOURCE_DEFAULT)
    assert (s["port"], s.source("port")) == (6000, st.SOURCE_CONFIG)
    assert (s["archive_timeout"], s.source("archive_timeout")) == (120, st.SOURCE_CONFIG)
    assert (s["http_port"], s.source("http_port")) == (7001, st.SOURCE_AUTO)
    assert (s["max_connections"], s.source("max_connections")) == (9, st.SOURCE_CLI)
    assert s["data_dir"] == str(data)


def test_data_dir_flag_chooses_which_auto_file_is_read(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    set_auto(str(b), "backup_threads", 5)
    config = write(tmp_path / "c.toml", f'data_dir = "{a}"\n')
    assert Settings.load(config, None, {})["backup_threads"] == 2
    assert Settings.load(config, str(b), {})["backup_threads"] == 5


def test_relative_paths_resolve_against_the_data_dir(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    set_auto(str(data), "archive_dest", "archive")
    s = Settings.load(None, str(data), {"backup_key_file": "/etc/k"})
    assert s["archive_dest"] == str(data / "archive")
    assert s["backup_key_file"] == "/etc/k"
    assert s["backup_dir"] == ""


def test_relative_data_dir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Settings.load(None, None, {})
    assert s["data_dir"] == str(tmp_path / "rustydb-data")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("port = ", "malformed TOML"),
        ("prot = 5432\n", "port"),
        ("port = 0\n", "port"),
        ("[server]\nport = 5432\n", "top-level"),
    ],
)
def test_bad_config_file_is_named_in_the_error(tmp_path, text, fragment):
    config = write(tmp_path / "bad.toml", text)
    with pytest.raises(SettingError) as e:
        Settings.load(config, str(tmp_path), {})
    assert config in str(e.value) and fragment in str(e.value)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(SettingError, match="cannot read config file"):
        Settings.load(str(tmp_path / "nope.toml"), str(tmp_path), {})


def test_bad_command_line_value_is_rejected(tmp_path):
    with pytest.raises(SettingError, match="port"):
        Settings.load(None, str(tmp_path), {"port": "99999"})


def test_show_all_lists_every_setting_with_source(tmp_path):
    set_auto(str(tmp_path), "archive_mode", "on")
    rows = show_all(Settings.load(None, str(tmp_path), {}))
    assert [r[0] for r in rows] == sorted(REGISTRY)
    by_name = {r[0]: r for r in rows}
    assert by_name["archive_mode"][1:5] == ("on", "", "live", st.SOURCE_AUTO)
    assert by_name["archive_timeout"][1:4] == ("60s", "s", "live")
    assert by_name["port"][3:5] == ("restart", st.SOURCE_DEFAULT)


# ---------------------------------------------------------------- auto file


def test_auto_file_round_trip_as_in_the_guide(tmp_path):
    data = str(tmp_path)
    set_auto(data, "archive_mode", "on")
    set_auto(data, "archive_dest", "/var/lib/rusty-db/archive")
    set_auto(data, "checkpoint_wal_size", "128MB")
    set_auto(data, "archive_timeout", "5min")
    path = os.path.join(data, st.AUTO_FILE_NAME)
    with open(path, "rb") as f:
        on_disk = tomllib.load(f)
    assert on_disk == {
        "archive_mode": True,
        "archive_dest": "/var/lib/rusty-db/archive",
        "checkpoint_wal_size": "128MB",
        "archive_timeout": "300s",
    }
    assert os.stat(path).st_mode & 0o777 == 0o600
    s = Settings.load(None, data, {})
    assert s["archive_mode"] is True and s["archive_dest"] == "/var/lib/rusty-db/archive"
    assert s["checkpoint_wal_size"] == 128 * 1024**2 and s["archive_timeout"] == 300

    reset_auto(data, "archive_mode")
    s = Settings.load(None, data, {})
    assert s["archive_mode"] is False and s.source("archive_mode") == st.SOURCE_DEFAULT
    assert s.source("archive_dest") == st.SOURCE_AUTO
    reset_auto(data, "archive_mode")  # resetting an unset setting is harmless
    reset_auto(data, None)
    s = Settings.load(None, data, {})
    assert all(s.source(n) == st.SOURCE_DEFAULT for n in REGISTRY if n != "data_dir")


def test_set_auto_validates_before_writing(tmp_path):
    data = str(tmp_path)
    set_auto(data, "backup_threads", 4)
    path = os.path.join(data, st.AUTO_FILE_NAME)
    before = open(path, "rb").read()
    for name, value in [("backup_threads", "0"), ("no_such", "1"), ("data_dir", "/x")]:
        with pytest.raises(SettingError):
            set_auto(data, name, value)
        assert open(path, "rb").read() == before
    with pytest.raises(SettingError):
        reset_auto(data, "no_such")


class RecordingFileOps(FileOps):
    def __init__(self, fail_fsync=False):
        self.calls = []
        self.fail_fsync = fail_fsync

    def fsync(self, fd):
        self.calls.append("fsync")
        if self.fail_fsync:
            raise OSError(5, "Input/output error")
        super().fsync(fd)

    def rename(self, src, dst):
        self.calls.append(("rename", os.path.basename(dst)))
        super().rename(src, dst)

    def fsync_dir(self, path):
        self.calls.append("fsync_dir")
        super().fsync_dir(path)


def test_auto_file_is_replaced_atomically(tmp_path):
    ops = RecordingFileOps()
    set_auto(str(tmp_path), "archive_mode", "on", fileops=ops)
    assert ops.calls == ["fsync", ("rename", st.AUTO_FILE_NAME), "fsync_dir"]
    assert os.listdir(tmp_path) == [st.AUTO_FILE_NAME]


def test_failed_fsync_leaves_the_old_auto_file(tmp_path):
    set_auto(str(tmp_path), "archive_mode", "on")
    with pytest.raises(OSError):
        set_auto(str(tmp_path), "archive_mode", "off", fileops=RecordingFileOps(fail_fsync=True))
    assert Settings.load(None, str(tmp_path), {})["archive_mode"] is True
    assert os.listdir(tmp_path) == [st.AUTO_FILE_NAME]  # no temp file left behind


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("archive_mode = \n", "malformed TOML"),
        ("archive_mod = true\n", "archive_mode"),
        ("port = 0\n", "port"),
        ('data_dir = "/elsewhere"\n', "data_dir"),
    ],
)
def test_bad_auto_file_is_named(tmp_path, text, fragment):
    path = tmp_path / st.AUTO_FILE_NAME
    path.write_text(text)
    for attempt in (
        lambda: Settings.load(None, str(tmp_path), {}),
        lambda: set_auto(str(tmp_path), "backup_threads", 3),
    ):
        with pytest.raises(SettingError) as e:
            attempt()
        assert str(path) in str(e.value) and fragment in str(e.value)
    assert path.read_text() == text  # never overwritten while broken


# ---------------------------------------------------------------- reload


def test_reload_applies_live_and_holds_restart_settings(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "rustydb.toml"
    config.write_text(f'data_dir = "{data}"\nport = 6000\nlog_level = "info"\n')
    s = Settings.load(str(config), None, {"backup_threads": 3})

    config.write_text(f'data_dir = "{data}"\nport = 6100\nlog_level = "debug"\nbackup_threads = 10\n')
    set_auto(str(data), "archive_mode", "on")
    result = s.reload()
    assert result.applied == {"log_level": ("info", "debug"), "archive_mode": (False, True)}
    assert result.pending_restart == {"port": (6000, 6100)}
    assert s["log_level"] == "debug" and s.source("log_level") == st.SOURCE_CONFIG
    assert s["archive_mode"] is True and s.source("archive_mode") == st.SOURCE_AUTO
    assert s["port"] == 6000  # not applied until restart
    assert s["backup_threads"] == 3  # the command line still wins
    assert s.pending_restart() == {"port": (6000, 6100)}

    # Reported once; the pending list persists until the file is changed back.
    again = s.reload()
    assert again.applied == {} and again.pending_restart == {}
    assert s.pending_restart() == {"port": (6000, 6100)}
    config.write_text(f'data_dir = "{data}"\nport = 6000\nlog_level = "debug"\n')
    s.reload()
    assert s.pending_restart() == {}


def test_reload_with_a_broken_file_changes_nothing(tmp_path):
    config = tmp_path / "rustydb.toml"
    config.write_text('log_level = "warning"\n')
    s = Settings.load(str(config), str(tmp_path), {})
    config.write_text('log_level = "warning"\narchive_mode = true\nport = "x"\n')
    with pytest.raises(SettingError, match="port"):
        s.reload()
    assert s["archive_mode"] is False and s["log_level"] == "warning"
