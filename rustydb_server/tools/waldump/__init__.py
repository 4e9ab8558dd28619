"""rusty-db-waldump's modes beyond the WAL listing of waldump_main.py."""
