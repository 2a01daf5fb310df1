"""The one error type of wmcore's I/O layers: bad input that the user can fix."""


class WMError(ValueError):
    """Bad input: the message names the input, what was expected, what was found and how to fix it.

    A subclass of ValueError so that callers that catch ValueError (the pure core raises plain
    ValueError) catch both; the CLI maps both to exit code 2.
    """
