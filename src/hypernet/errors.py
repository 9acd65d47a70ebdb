"""The one exception type users see: its message is a sentence naming the file/field and what was expected."""


class HypernetError(Exception):
    """A problem with the user's input (a file, a name, a value) that hypernet explains in one sentence.

    The CLI, the HTTP API and the web UI show ``str(err)`` to the user without a traceback.
    """
