"""RustyDB client: the wire protocol, a client library and rusty-db-cli."""
