# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one error type that module_utils raise; modules turn it into fail_json."""

# Exit codes of the WAL receiver and sender. PostgreSQL reads a restore_command's code: 1 to 125 is "not in
# the archive" (recovery ends there and, with no target, promotes); above 125 is fatal (the server stops,
# and recovery resumes at its next start). For archive_command any non-zero code means "retry".
EXIT_OK = 0
EXIT_NOT_FOUND = 1  # sender get -> PostgreSQL: not archived (a normal answer to restore_command's probes)
EXIT_REFUSED = 2  # bad request or bad file: sending it again will not help
EXIT_TEMPORARY = 3  # I/O error, lock busy, disk full, host unreachable: try again (put: PostgreSQL; get: the sender)
# receiver get -> sender: the archive does not hold the file. A code of its own (sysexits' EX_NOINPUT),
# which no crash gives (Python exits 1 on an uncaught exception, ssh 255, a shell 126 or 127).
EXIT_NOT_ARCHIVED = 66
# sender get -> PostgreSQL: the file could not be fetched, nor its absence confirmed. Above 125 and no
# 128+signal look-alike: the startup process raises FATAL instead of ending recovery early.
EXIT_STOP_RECOVERY = 200


class BarmanError(Exception):
    """A refusal with what went wrong, how to fix it, and the data behind it.

    module_utils never call fail_json: they raise this (or a subclass) and the module reports
    ``msg`` (message plus hint) and ``data`` as they are.
    """

    def __init__(self, message, hint=None, **data):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.data = data

    def __str__(self):
        if self.hint:
            return '%s. %s' % (self.message.rstrip('.'), self.hint)
        return self.message

    def fail_json_kwargs(self):
        """Keyword arguments for AnsibleModule.fail_json()."""
        result = dict(msg=str(self))
        if self.hint:
            result['hint'] = self.hint
        result.update(self.data)
        return result


def shown(value):
    """A value for an error message: names come from user input and directory listings, so a hostile
    value must not flood the message."""
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + '...'


def is_int(value):
    """An int, and not a bool (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)
