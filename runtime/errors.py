"""The one exception type gencc raises for user-facing problems; the CLI prints it as one line."""


class GenccError(ValueError):
    """A problem with the user's input, files or request. The message names the offending value."""
