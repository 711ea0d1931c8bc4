"""Every error a user can cause and fix. The command line prints a `UserError` as one line,
`turbo-ray: error: <message>`, and the message names what to fix (the key, file, line or
utterance). Everything else is a bug and keeps its traceback."""


class UserError(Exception):
    """Something the user can fix; the message says what."""


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


class SearchSpaceError(ConfigError):
    """A search-space file that cannot be used; the message names the file and the key."""


class UsageError(UserError):
    """A job that cannot run as asked (its output folder, --resume, flags that exclude each
    other)."""


class InputError(UsageError):
    """An input that cannot be predicted; the message names the file (and line)."""


class ModelFolderError(UsageError):
    """Not a model folder this version can load; the message says why."""


class CorpusError(UserError, ValueError):
    """Not a corpus this version reads, or (strict) a corpus with problems; the message names the
    files, lines or utterance ids."""


class ShardError(UserError, RuntimeError):
    """Invalid input, unreadable audio, or missing / incomplete / corrupt shards (the message
    names which)."""


class ClusterError(UserError):
    """A Ray cluster this job cannot run on; the message says what to change."""


class RequestError(InputError):
    """A request the served model cannot answer (`turbo-ray serve`): an HTTP 4xx, `status`, whose
    message names the problem."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status
