"""RustyDB server: a trio daemon on SQLite with a logical WAL."""

__version__ = "0.1.0"
