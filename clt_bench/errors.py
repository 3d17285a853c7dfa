"""User-facing errors: bad input ends with one clear sentence and exit code 2."""


class UserError(ValueError):
    """Bad input (unknown name, malformed config, wrong-shaped checkpoint, missing network).

    A ``ValueError``, so library callers can catch it as one. The CLI prints ``str(err)`` as one
    sentence and exits with code 2; never a traceback. Library messages name the API argument or
    config key (``clt.lr``); only the CLI layer names command-line flags (``--set``).
    """

    exit_code = 2
