# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""rsync argument lists for copying a live PGDATA, and reading what rsync reports back.

Pure functions returning plain values; nothing runs rsync.
"""

import re
from collections import namedtuple
from typing import Dict, Iterable, List, Optional

from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

# What not to copy from a running cluster. Source: PostgreSQL 15 documentation, chapter
# "Continuous Archiving and Point-in-Time Recovery", "Backing Up the Data Directory"
# (https://www.postgresql.org/docs/15/continuous-archiving.html#BACKUP-LOWLEVEL-BASE-BACKUP-DATA),
# which matches excludeDirContents / excludeFiles in src/backend/backup/basebackup.c.
# Not expressible as rsync patterns, so still copied: unlogged and temporary relation files
# (pg_basebackup skips them too); they are harmless, only bigger.
#
# Patterns are rsync filter patterns relative to the transfer root, so the source must be the
# PGDATA directory WITH a trailing slash ('/var/lib/postgresql/15/main/'). A leading '/'
# anchors a pattern at the PGDATA root; 'dir/*' drops the contents but keeps the directory
# itself, as pg_basebackup does (empty directories keep their permissions).
PGDATA_EXCLUDED_DIRECTORY_CONTENTS = (
    '/pg_stat_tmp/*',  # temporary statistics; extensions such as pg_stat_statements write here
    '/pg_replslot/*',  # replication slots are not useful in a copy (see the doc section)
    '/pg_dynshmem/*',  # removed at startup
    '/pg_notify/*',  # removed at startup
    '/pg_serial/*',  # only kept for debugging, not needed
    '/pg_snapshots/*',  # removed at startup
    '/pg_subtrans/*',  # zeroed at startup
)
# pg_wal goes whole, directory or symlink: with initdb --waldir it is a link to the WAL disk, and a
# copy keeping the link would write its WAL into the original's. WAL is archived and fetched
# separately; the backup makes pg_wal again as PostgreSQL's own base backup does: an empty
# directory with an empty archive_status/ (see pgdata_layout.make_empty_pg_wal).
PG_WAL = 'pg_wal'
PG_WAL_ARCHIVE_STATUS = 'pg_wal/archive_status'
PG_WAL_EXCLUDE = '/' + PG_WAL
PGDATA_EXCLUDED_FILES = (
    'postgresql.auto.conf.tmp',  # ALTER SYSTEM's temporary file
    'current_logfiles.tmp',  # the logging collector's temporary file
    'pg_internal.init*',  # relation cache, rebuilt at startup (prefix match, in every database)
    'backup_label',  # belongs to another backup; ours is written by pg_backup_stop()
    'tablespace_map',  # same
    'backup_manifest',  # belongs to the backup this server was restored from
    'postmaster.pid',  # a copied pid file would stop the restored server from starting
    'postmaster.opts',
    'pgsql_tmp*',  # temporary files and directories (base/pgsql_tmp, tablespaces)
    '/barman_wal_spool',  # restore_command's look-ahead spool, left when recovery_end_command did not run
)
# Not in PostgreSQL's list, excluded on purpose: a signal file copied from a standby (or from a
# server in recovery) would make the restored copy start as a standby or in targeted recovery
# by surprise. The restore step writes the signal file it wants.
PGDATA_EXCLUDED_SIGNAL_FILES = (
    '/recovery.signal',
    '/standby.signal',
)
#: Every exclude pattern for the main pass over a live PGDATA (a tuple: copy it to extend).
PGDATA_EXCLUDES = (
    PGDATA_EXCLUDED_DIRECTORY_CONTENTS + (PG_WAL_EXCLUDE,) + PGDATA_EXCLUDED_FILES + PGDATA_EXCLUDED_SIGNAL_FILES
)

#: pg_control, relative to PGDATA. pg_basebackup sends it after everything else; so must we:
#: exclude it from the main pass (PG_CONTROL_EXCLUDE) and copy it alone, last.
PG_CONTROL = 'global/pg_control'
PG_CONTROL_EXCLUDE = '/' + PG_CONTROL

RsyncResult = namedtuple('RsyncResult', ['ok', 'meaning', 'hint'])
RsyncResult.__doc__ = 'What an rsync exit code means: ok (bool), meaning (str), hint (str or None).'

# Exit codes from the rsync(1) man page, "EXIT VALUES", with what to do about them.
_EXIT_CODES = {
    0: ('Success', None),
    1: ('Syntax or usage error', 'The rsync command line was refused; this is a bug in the caller'),
    2: ('Protocol incompatibility', 'Use rsync 3.x on both hosts'),
    3: ('Errors selecting input/output files, directories', 'Check that both paths exist'),
    4: (
        'Requested action not supported',
        'An option is not supported by the remote rsync, or a restricted shell (rrsync) refused it',
    ),
    5: ('Error starting client-server protocol', 'Check that rsync is installed on the remote host'),
    10: ('Error in socket I/O', None),
    11: ('Error in file I/O', 'Check free space and permissions on the destination'),
    12: (
        'Error in rsync protocol data stream',
        'Usually the connection broke or the remote side printed something on login; see stderr',
    ),
    13: ('Errors with program diagnostics', None),
    14: ('Error in IPC code', None),
    15: ('Sibling process crashed', None),
    16: ('Sibling process was killed by a signal', None),
    19: ('Received SIGUSR1', None),
    20: ('Received SIGINT, SIGTERM, or SIGHUP', 'rsync was interrupted'),
    21: ('Some error returned by waitpid()', None),
    22: ('Error allocating core memory buffers', 'Not enough memory'),
    23: (
        'Partial transfer due to error',
        'Some files could not be read or written (often permissions); see stderr',
    ),
    24: (
        'Partial transfer due to vanished source files',
        'Files disappeared while being copied, which is normal during a live backup',
    ),
    25: ('The --max-delete limit stopped deletions', None),
    30: ('Timeout in data send/receive', 'Check the network between the hosts'),
    35: ('Timeout waiting for daemon connection', 'Check the network between the hosts'),
    255: (
        'ssh failed',
        'ssh failed: check the host key in known_hosts and that the key is authorized',
    ),
}
VANISHED_SOURCE_FILES = 24

_STATS_FIELDS = (
    ('number_of_files', r'Number of files'),
    ('regular_files_transferred', r'Number of (?:regular )?files transferred'),
    ('total_file_size', r'Total file size'),
    ('total_transferred_file_size', r'Total transferred file size'),
    ('literal_data', r'Literal data'),
    ('matched_data', r'Matched data'),
    ('bytes_sent', r'Total bytes sent'),
    ('bytes_received', r'Total bytes received'),
)

# Options that would undo what rsync_argv guarantees (ssh with host key checking, protected
# arguments), refused in ``extra``.
_REFUSED_EXTRA_OPTIONS = (
    '--rsh',
    '--rsync-path',
    '--old-args',
    '--no-protect-args',
    '--no-secluded-args',
    '--no-s',
    '--remote-option',
)


class InvalidRsyncArgument(BarmanError, ValueError):
    """An rsync argument was refused."""

    code = 'INVALID_ARGUMENT'


class RsyncFailed(BarmanError):
    """rsync exited with a code that means the copy is not complete."""

    code = 'RSYNC_FAILED'


def _no_control_chars(name, value):
    if not isinstance(value, str) or not value:
        raise InvalidRsyncArgument('%s must be a non-empty string' % name, value=value)
    if re.search(r'[\x00-\x1f\x7f]', value):
        raise InvalidRsyncArgument('%s contains a newline or control character' % name, value=value)
    return value


def _operand(name, value):
    value = _no_control_chars(name, value)
    if value.startswith('-'):
        raise InvalidRsyncArgument('%s must not start with "-"' % name, value=value)
    return value


def _extra_option(option):
    option = _no_control_chars('An extra rsync option', option)
    if not option.startswith('--') or option == '--':
        raise InvalidRsyncArgument(
            'Extra rsync options must be long options ("--name" or "--name=value")',
            hint='Short option clusters such as "-ve" could hide an option that replaces ssh',
            option=option,
        )
    name = option.split('=', 1)[0]
    if name in _REFUSED_EXTRA_OPTIONS:
        raise InvalidRsyncArgument(
            'The rsync option %s is not allowed in extra' % name,
            hint='The remote shell and argument protection are set by rsync_argv itself',
            option=option,
        )
    return option


def rsync_argv(
    source: str,
    destination: str,
    rsh: Optional[str] = None,
    excludes: Iterable[str] = (),
    link_dest: Optional[str] = None,
    checksum: bool = False,
    whole_file: bool = False,
    files_from: Optional[str] = None,
    bandwidth_limit_kbps: Optional[int] = None,
    compress: bool = False,
    delete: bool = False,
    dry_run: bool = False,
    extra: Iterable[str] = (),
    protect_args: bool = True,
) -> List[str]:
    """Return the argv for one rsync run, ending with ``'--', source, destination``.

    Always ``--archive --numeric-ids --stats`` (and ``--protect-args`` unless
    ``protect_args=False``, for a remote restricted shell such as rrsync that refuses it).
    ``--protect-args`` makes rsync send remote paths through its protocol, so the remote shell
    never splits or expands them. No ``--inplace``: the destination is a fresh directory.
    No ``--hard-links``: PGDATA has none.

    ``source``/``destination``: local paths or ``ssh.remote_path()`` values; a directory
    source ending with '/' copies its contents, and that is required when any exclude is
    anchored ('/...'), otherwise the anchored patterns would silently match nothing.
    ``rsh``: ``ssh.rsync_rsh(...)`` for a remote side, None for a local copy.
    ``excludes``: rsync patterns, e.g. ``PGDATA_EXCLUDES + (PG_CONTROL_EXCLUDE,)``.
    ``link_dest``: absolute path, on the destination host, of the previous backup (unchanged
    files become hard links to it). ``checksum``: compare file contents, not size and mtime.
    ``whole_file``: send a changed file whole instead of running the delta algorithm against its
    older copy (the ``link_dest`` one); unchanged files are hard-linked all the same.
    ``files_from``: a local file listing paths relative to ``source`` (then ``--archive``
    does not recurse into listed directories). ``bandwidth_limit_kbps``: ``--bwlimit``, in
    units of 1024 bytes per second. ``extra``: more long options, appended as given, except
    those that would replace ssh or turn off argument protection.
    """
    source = _operand('source', source)
    destination = _operand('destination', destination)
    argv = ['rsync', '--archive']
    if protect_args:
        argv.append('--protect-args')
    argv += ['--numeric-ids', '--stats']
    if checksum:
        argv.append('--checksum')
    if whole_file:
        argv.append('--whole-file')
    if compress:
        argv.append('--compress')
    if delete:
        argv.append('--delete')
    if dry_run:
        argv.append('--dry-run')
    if bandwidth_limit_kbps is not None:
        if (
            isinstance(bandwidth_limit_kbps, bool)
            or not isinstance(bandwidth_limit_kbps, int)
            or bandwidth_limit_kbps < 1
        ):
            raise InvalidRsyncArgument(
                'bandwidth_limit_kbps must be a positive integer or None', value=bandwidth_limit_kbps
            )
        argv.append('--bwlimit=%d' % bandwidth_limit_kbps)
    if rsh is not None:
        argv.append('--rsh=%s' % _no_control_chars('rsh', rsh))
    if link_dest is not None:
        link_dest = _no_control_chars('link_dest', link_dest)
        if not link_dest.startswith('/'):
            raise InvalidRsyncArgument(
                'link_dest must be an absolute path',
                hint='A relative --link-dest is resolved against the destination, rarely what is meant',
                value=link_dest,
            )
        argv.append('--link-dest=%s' % link_dest)
    if files_from is not None:
        argv.append('--files-from=%s' % _no_control_chars('files_from', files_from))
    if isinstance(excludes, str):
        raise InvalidRsyncArgument('excludes must be a list of patterns, not a string', value=excludes)
    excludes = [_no_control_chars('An exclude pattern', pattern) for pattern in excludes]
    if any(pattern.startswith('/') for pattern in excludes) and not source.endswith('/'):
        raise InvalidRsyncArgument(
            'The source must end with "/" when exclude patterns are anchored with "/"',
            hint='Write the PGDATA source as "%s/"' % source,
            source=source,
        )
    argv += ['--exclude=%s' % pattern for pattern in excludes]
    if isinstance(extra, str):
        raise InvalidRsyncArgument('extra must be a list of options, not a string', value=extra)
    argv += [_extra_option(option) for option in extra]
    return argv + ['--', source, destination]


def interpret_rsync_exit(code: int, vanished_ok: bool = True) -> RsyncResult:
    """Return ``RsyncResult(ok, meaning, hint)`` for rsync's exit status ``code``.

    0 is ok. 24 (source files vanished) is ok when ``vanished_ok``: PostgreSQL drops and
    creates files during a live backup and WAL replay repairs that. Everything else is not ok,
    23 (partial transfer due to error) included. A negative code is subprocess's way of
    saying rsync was killed by that signal.
    """
    if isinstance(code, bool) or not isinstance(code, int):
        raise InvalidRsyncArgument('The rsync exit code must be an integer', rc=code)
    if code < 0:
        return RsyncResult(False, 'rsync was killed by signal %d' % -code, None)
    if code in _EXIT_CODES:
        meaning, hint = _EXIT_CODES[code]
    else:
        meaning, hint = 'Unknown rsync exit code %d' % code, 'See the rsync output on stderr'
    ok = code == 0 or (code == VANISHED_SOURCE_FILES and vanished_ok)
    return RsyncResult(ok, meaning, hint)


def check_rsync_exit(code: int, vanished_ok: bool = True, stderr: Optional[str] = None) -> RsyncResult:
    """Return the :class:`RsyncResult` when ok, else raise :class:`RsyncFailed` with its hint."""
    result = interpret_rsync_exit(code, vanished_ok=vanished_ok)
    if result.ok:
        return result
    data = dict(rc=code)
    if stderr:
        data['stderr'] = stderr
    raise RsyncFailed('rsync failed with exit code %d: %s' % (code, result.meaning), hint=result.hint, **data)


def _stat_number(text):
    """'1,234' -> 1234. rsync groups digits with ',' (or '.' in some locales)."""
    digits = text.replace(',', '').replace('.', '').replace("'", '')
    return int(digits)


def parse_rsync_stats(output: str) -> Dict[str, Optional[int]]:
    """Return the numbers of ``rsync --stats`` output as a dict of int (None when absent).

    Keys: number_of_files, regular_files_transferred, total_file_size,
    total_transferred_file_size, literal_data, matched_data, bytes_sent, bytes_received.
    Expects rsync's default number format (no ``--human-readable`` units); run rsync with
    ``LC_ALL=C`` to be sure of it.
    """
    if not isinstance(output, str):
        raise InvalidRsyncArgument('rsync output must be a string', value=repr(output))
    stats = dict((key, None) for key, _label in _STATS_FIELDS)
    for key, label in _STATS_FIELDS:
        match = re.search(r'^%s: ([0-9][0-9,.\']*)' % label, output, re.MULTILINE)
        if match:
            stats[key] = _stat_number(match.group(1))
    return stats
