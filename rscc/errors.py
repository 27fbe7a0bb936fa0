"""The error type of bad user input, shared by every rscc reader and command (standard library only, so that
`rscc eval` and the remote-code processor can use it without torch or the rest of the package)."""


class RsccInputError(ValueError):
    """A user's input (a file, an array, an option) is not what rscc expects; the message names it and what was
    expected. Every reader of user input raises this type (or a subclass) for bad input."""


class InputFileNotFoundError(RsccInputError, FileNotFoundError):
    """A named input file does not exist."""
