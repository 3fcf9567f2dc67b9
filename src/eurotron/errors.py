"""Errors that mean "the user's input is wrong": the CLIs print them as one message, no traceback."""


class UserError(Exception):
    """Base class: the message names the bad value and how to fix it."""
