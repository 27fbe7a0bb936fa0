"""rscc's error type for bad input, in remote code so that the saved processor raises it without rscc installed (the
package's `rscc.errors` re-exports it). Standard library only."""


class RsccInputError(ValueError):
    """A user's input (a file, an array, an option) is not what rscc expects; the message names it and what was
    expected. Every reader of user input raises this type (or a subclass) for bad input."""


class InputFileNotFoundError(RsccInputError, FileNotFoundError):
    """A named input file does not exist."""


__all__ = ["RsccInputError", "InputFileNotFoundError"]
