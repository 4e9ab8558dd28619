"""What the tests share: server processes and tools (servers), backups built in-process (backups), fixtures."""
