"""User-facing errors: bad input ends with one clear sentence and exit code 2."""


class UserError(Exception):
    """Bad input (unknown name, malformed config, wrong-shaped checkpoint, missing network).

    The CLI prints ``str(err)`` as one sentence and exits with code 2; never a traceback.
    """

    exit_code = 2
