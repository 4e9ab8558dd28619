"""The error every restore raises when it cannot go on."""


class RestoreError(Exception):
    """The restore cannot go on; the message says what, why and what to do."""
