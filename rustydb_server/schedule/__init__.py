"""The backup scheduler: a pure plan (plan.py) and the trio task that follows it (scheduler.py)."""
