"""rusty-db-restore's verbs, one module each; ``tools/restore_main.py`` dispatches to them."""
