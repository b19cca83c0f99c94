"""The core's errors: plain exceptions, no web framework. Each says in its message what was wrong.

A door turns them into its own answers: the HTTP door (service/errors.py, service/server) gives each `code`
an HTTP status; the CLI prints the message and exits non-zero; a Python caller catches them.
"""

from __future__ import annotations


class CoreError(ValueError):
    """Input the core refuses; `code` is a stable machine-readable name, `message` the human one."""

    code: str = "invalid_input"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # the message, even after a door prefixed it (images[3]: ...)
        return self.message


class InvalidImage(CoreError):
    code = "invalid_image"


class ImageTooLarge(CoreError):
    code = "image_too_large"


class TooManyImages(CoreError):
    code = "too_many_images"


class MalformedJSON(CoreError):
    code = "malformed_json"


class InvalidTokens(CoreError):
    code = "invalid_tokens"


class MalformedArray(CoreError):
    code = "malformed_npy"


class InvalidArray(CoreError):
    code = "invalid_array"


class InvalidBudget(CoreError):
    """A token budget (num_tokens, target_psnr) outside its range, or both at once."""

    code = "invalid_budget"


class NotPrefixDecodable(CoreError):
    """A token budget or a prefix of tokens sent to a model that decodes exactly K tokens."""

    code = "not_prefix_decodable"


class ModelLoadError(Exception):
    """The model (a file, or a name on the Hugging Face Hub) is missing or unusable; a one-line reason."""
