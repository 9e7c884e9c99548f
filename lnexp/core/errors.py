"""The one error type the command line handles: bad input, or a run folder that cannot be used."""


class LnexpError(Exception):
    """Printed as one line (`error: ...`) with exit code `exit_code` (2: bad input) and no traceback,
    by the one handler in lnexp/cli/_groups.py; nothing has been written or overwritten."""

    exit_code = 2
