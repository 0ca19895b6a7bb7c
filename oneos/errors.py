"""Exceptions that carry a message a person can act on."""


class OneOSError(Exception):
    """An error for people: one line saying what happened and what to do."""

    exit_code = 1


class UsageError(OneOSError):
    """The command line or an input document is wrong; the caller must fix it."""

    exit_code = 2
