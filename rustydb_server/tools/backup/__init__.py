"""rusty-db-backup's verbs, one module each (take, verify, info, rotate_key,
create_key, query); ``tools/backup_main.py`` parses the flags and picks one.

Each verb module's ``run(args)`` is its entry point: it reads the parsed
flags and hands explicit arguments to the functions below it.
"""

PROG = "rusty-db-backup"
