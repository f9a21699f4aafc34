# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The catalog reader: the forced command of a mirror backup server's key on the primary backup server.

sshd runs it for every connection made with that key, whatever command the client asked for; the
request is in SSH_ORIGINAL_COMMAND and only reads of the catalogs of the servers named by --server are
honoured:
  list SERVER [WAL]
        stdout: one JSON object, then exit 0:
        {"server": SERVER, "identity": identity.json as an object, or null,
         "backups": [{"id": ID, "status": STATUS or null, "info": the text of meta/ID-backup.info}, ...],
         "wal": {"newest": NAME or null, "newest_time": T or null, "segments": N, "after": M,
                 "first_after_time": T or null}}
        backups oldest first; status null when the backup.info does not parse (the mirror decides).
        wal from the xlog.db, segments only: "after" counts those named after WAL (all of them without
        WAL) and "first_after_time" is the xlog.db time of the first of those.
  rsync --server --sender -FLAGS[eCAPABILITIES] [--numeric-ids] [--checksum] [--bwlimit=KBPS] . PATH
        what an rsync client pulling from this server sends, for example for "rsync -a [-H] [--checksum]
        [--dry-run] [--numeric-ids] [--bwlimit=KBPS] barman@primary:HOME/SERVER/base/ID/ DIR":
        rsync runs as the sender of PATH, which must be (symbolic links resolved) the directory of a
        backup in the catalog of one of the servers, or a file or directory below it
Anything else is refused with EXIT_REFUSED and nothing touched: no writes or deletes, no meta/, wals/ or
other file of the Barman home (.ssh, .pgpass, locks), no other server, no shell. WAL reaches the mirror
another way. EXIT_TEMPORARY when a catalog file cannot be read or rsync cannot be started.
"""

import argparse
import collections
import json
import os
import re
import shlex
import sys
from typing import BinaryIO, Dict, List, Mapping, Optional, Sequence, TextIO

from ansible_collections.barman.postgresql.plugins.module_utils import catalog, identityfile, infofile, wal, xlogdb
from ansible_collections.barman.postgresql.plugins.module_utils.errors import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_TEMPORARY,
    BarmanError,
    shown,
)

PROG = 'barman-catalog-reader'
USAGE = "this key only reads the catalogs of %s: 'list SERVER [WAL]' and rsync reads of their backups"
BACKUP_INFO_SUFFIX = '-backup.info'

# The letters before "e" in the flag bundle an rsync client sends to its sender: -a (rlptgoD), -H, the
# checksum (c), dry-run (n) and whole files (W) of the mirror, and the verbosity (v, q). None of them writes on
# this side.
# The letters after "e" are the client's capabilities, not flags.
READ_ONLY_FLAGS = 'rlptgoDHWcnvq'
REFUSED_FLAGS = {
    's': 'protect-args sends the real arguments after this check',
    'L': 'copy-links follows symbolic links out of the backup',
    'k': 'copy-dirlinks follows symbolic links out of the backup',
    'R': 'relative paths come with --files-from, which this key does not allow',
}
# The client sends --numeric-ids and --bwlimit=KBPS (the mirror's bandwidth limit) as they are;
# --checksum reaches the sender as "c" in the bundle, but the long form asks for nothing more.
# --link-dest, --itemize-changes and --stats never reach the sender.
ALLOWED_OPTIONS = ('--numeric-ids', '--checksum', '--bwlimit=KBPS')
_BWLIMIT_RE = re.compile(r'--bwlimit=[0-9]{1,9}\Z')
REFUSED_OPTIONS = {
    '--remove-source-files': 'it deletes the files it sends',
    '--remove-sent-files': 'it deletes the files it sends',
    '--delete': 'it deletes files',
    '--files-from': 'it reads a list of files to send, which this check does not see',
    '--include-from': 'it reads a filter file on this server',
    '--exclude-from': 'it reads a filter file on this server',
    '--protect-args': 'it sends the real arguments after this check',
    '--secluded-args': 'it sends the real arguments after this check',
    '--copy-links': 'it follows symbolic links out of the backup',
    '--copy-unsafe-links': 'it follows symbolic links out of the backup',
    '--copy-dirlinks': 'it follows symbolic links out of the backup',
}
_CAPABILITIES_RE = re.compile(r'[.A-Za-z]*\Z')


class RequestError(BarmanError):
    """The client asked for something this key does not allow."""

    code = 'REQUEST_REFUSED'


Request = collections.namedtuple('Request', 'verb layout wal rsync_argv')


def _refuse(message: str, code: Optional[str] = None) -> RequestError:
    return RequestError(message, code=code)


def parse_request(command: Optional[str], layouts: Mapping[str, catalog.ServerLayout]) -> Request:
    """A Request from SSH_ORIGINAL_COMMAND, for the servers of ``layouts``; else RequestError."""
    if not command or not command.strip():
        raise _refuse('refused an empty request (a login or a bare ssh)')
    try:
        words = shlex.split(command)
    except ValueError:
        raise _refuse('refused %s: its quoting does not parse' % shown(command)) from None
    if words[0] == 'list':
        return _parse_list(command, words, layouts)
    if words[0] == 'rsync':
        return Request('rsync', None, None, _parse_rsync(command, words, layouts))
    raise _refuse('refused %s: %s is not a request this key answers' % (shown(command), shown(words[0])))


def _layout_of(command: str, server: str, layouts: Mapping[str, catalog.ServerLayout]) -> catalog.ServerLayout:
    try:
        catalog.validate_server_name(server)
    except catalog.InvalidName as error:
        raise _refuse('refused %s: %s' % (shown(command), error), 'INVALID_NAME') from None
    if server not in layouts:
        raise _refuse('refused %s: server %s is not one this key may read' % (shown(command), shown(server)))
    return layouts[server]


def _parse_list(command, words, layouts) -> Request:
    if len(words) not in (2, 3):
        raise _refuse('refused %s: list takes a server name and, optionally, a WAL segment name' % shown(command))
    layout = _layout_of(command, words[1], layouts)
    after = words[2] if len(words) == 3 else None
    if after is not None and not wal.is_segment_name(after):
        raise _refuse(
            'refused %s: %s is not a WAL segment name (24 hexadecimal digits in capitals)'
            % (shown(command), shown(after)),
            'INVALID_WAL_NAME',
        )
    return Request('list', layout, after, None)


def _check_flag_bundle(bundle: str) -> None:
    if not bundle.startswith('-') or bundle.startswith('--') or len(bundle) < 2:
        raise _refuse('refused rsync argument %s where the short-flag bundle (-logDtpr...) goes' % shown(bundle))
    flags, _e, capabilities = bundle[1:].partition('e')
    if not _CAPABILITIES_RE.match(capabilities):
        raise _refuse('refused rsync flags %s: the capabilities after "e" are not letters' % shown(bundle))
    for letter in flags:
        if letter in REFUSED_FLAGS:
            raise _refuse('refused rsync flag -%s: %s' % (letter, REFUSED_FLAGS[letter]))
        if letter not in READ_ONLY_FLAGS:
            raise _refuse(
                'refused rsync flag %s: not one of the read-only flags this key allows, -%s'
                % (shown('-' + letter), READ_ONLY_FLAGS)
            )


def _check_option(option: str) -> None:
    name = option.split('=', 1)[0]
    if option == '--':
        raise _refuse("refused rsync argument '--': an rsync client never sends it, and it would change what follows")
    if option in ALLOWED_OPTIONS or _BWLIMIT_RE.match(option):
        return
    why = REFUSED_OPTIONS.get(name) or ('it deletes files' if name.startswith('--delete') else None)
    if why:
        raise _refuse('refused rsync option %s: %s' % (name, why))
    if option.startswith('--'):
        raise _refuse(
            'refused rsync option %s: not one of the options this key allows (%s)'
            % (shown(name), ', '.join(ALLOWED_OPTIONS))
        )
    if option.startswith('-'):
        raise _refuse('refused rsync flags %s: only one short-flag bundle is allowed' % shown(option))
    raise _refuse("refused rsync argument %s before '.': the one path comes after it" % shown(option))


def _parse_rsync(command, words, layouts) -> List[str]:
    """The argv of the rsync sender to run, rebuilt from the validated parts of ``words``."""
    if words[1:2] != ['--server']:
        raise _refuse(
            'refused %s: only an rsync client pulling a backup reaches rsync here (rsync --server --sender ...)'
            % shown(command)
        )
    if words[2:3] != ['--sender']:
        raise _refuse(
            'refused rsync --server without --sender: the client would write to this server, and this key only reads'
        )
    rest = words[3:]
    if not rest:
        raise _refuse("refused %s: rsync needs its flags, '.' and one path" % shown(command))
    bundle = rest[0]
    _check_flag_bundle(bundle)
    if '.' not in rest[1:]:
        raise _refuse("refused %s: rsync must end with '.' and the one path to read" % shown(command))
    dot = rest.index('.', 1)
    options, paths = rest[1:dot], rest[dot + 1 :]
    for option in options:
        _check_option(option)
    if len(paths) != 1:
        raise _refuse("refused %s: rsync reads exactly one path after '.', not %d" % (shown(command), len(paths)))
    path = backup_path(paths[0], layouts)
    return ['rsync', '--server', '--sender', bundle] + options + ['.', path]


def backup_path(path: str, layouts: Mapping[str, catalog.ServerLayout]) -> str:
    """``path`` normalised, if it is HOME/SERVER/base/ID or below it for a server of ``layouts`` and a
    backup in its catalog, and no symbolic link leads out of that backup directory; else RequestError.

    Given as it is to rsync (the trailing slash kept: it tells rsync to send the content of a directory
    rather than the directory). rsync does no globbing of the paths of a sender run without a shell.
    """

    def refuse(why, code=None):
        raise _refuse('refused rsync path %s: %s' % (shown(path), why), code)

    if not path.startswith('/'):
        refuse('it must be absolute, HOME/SERVER/base/BACKUP_ID[/...]')
    if '..' in path.split('/'):
        refuse('".." may not appear in it')
    home = next(iter(layouts.values())).barman_home
    parts = [part for part in path.split('/') if part not in ('', '.')]
    home_parts = [part for part in home.split('/') if part]
    if parts[: len(home_parts)] != home_parts:
        refuse('it is not in the Barman home %s' % home)
    below_home = parts[len(home_parts) :]
    if not below_home or below_home[0] not in layouts:
        refuse('it is not in the catalog of a server this key may read (%s)' % ', '.join(layouts))
    layout = layouts[below_home[0]]
    if below_home[1:2] != ['base'] or len(below_home) < 3:
        refuse('only the backups in %s/base/BACKUP_ID are read with rsync, not meta/ or wals/' % layout.root)
    backup_id = below_home[2]
    try:
        catalog.validate_backup_id(backup_id)
    except catalog.InvalidName as error:
        refuse(str(error), 'INVALID_NAME')
    if not os.path.isfile(layout.backup_info_path(backup_id)):
        refuse(
            'backup %s is not in the catalog of %s (no meta/%s%s)'
            % (backup_id, layout.server, backup_id, BACKUP_INFO_SUFFIX),
            'NO_SUCH_BACKUP',
        )
    wanted = os.path.join(layout.base_dir, *below_home[2:])
    # base/ may be a link the administrator made (another disk); the backup and what is below may not
    # lead anywhere else.
    backup_root = os.path.join(os.path.realpath(layout.base_dir), backup_id)
    real = os.path.realpath(wanted)
    if real != backup_root and not real.startswith(backup_root + os.sep):
        refuse('a symbolic link leads it to %s, out of backup %s' % (shown(real), backup_id))
    # "ID/." asks rsync for the content of ID as "ID/" does.
    return wanted + '/' if path.endswith(('/', '/.')) else wanted


def _backups(layout: catalog.ServerLayout) -> List[Dict[str, Optional[str]]]:
    """The backups of the catalog, oldest first, each with the text of its backup.info and its status."""
    try:
        entries = os.listdir(layout.meta_dir)
    except FileNotFoundError:
        return []
    texts, infos = {}, {}
    for entry in entries:
        if not entry.endswith(BACKUP_INFO_SUFFIX):
            continue
        backup_id = entry[: -len(BACKUP_INFO_SUFFIX)]
        try:
            catalog.validate_backup_id(backup_id)
        except catalog.InvalidName:
            continue  # not a backup Barman made: nothing a mirror could copy
        path = os.path.join(layout.meta_dir, entry)
        try:
            with open(path, 'rb') as handle:
                data = handle.read()
        except FileNotFoundError:
            continue  # deleted since the listing
        try:
            texts[backup_id] = data.decode('utf-8')
            infos[backup_id] = infofile.parse_backup_info(texts[backup_id], source=path)
        except ValueError:  # not UTF-8, or not backup.info: the mirror decides what to do with it
            texts[backup_id] = data.decode('utf-8', errors='replace')
            infos[backup_id] = None
    ordered = sorted(texts, key=lambda backup_id: infofile.backup_order_key(backup_id, infos[backup_id] or {}))
    return [
        dict(id=backup_id, status=infos[backup_id]['status'] if infos[backup_id] else None, info=texts[backup_id])
        for backup_id in ordered
    ]


def _wal_summary(layout: catalog.ServerLayout, after: Optional[str]) -> Dict[str, object]:
    times = {}
    for entry in xlogdb.read_xlog_db(layout.xlog_db):
        if wal.is_segment_name(entry.name):
            times[entry.name] = entry.time  # listed twice: the later line is the newer record
    names = sorted(times)
    later = [name for name in names if after is None or name > after]
    return dict(
        newest=names[-1] if names else None,
        newest_time=times[names[-1]] if names else None,
        segments=len(names),
        after=len(later),
        first_after_time=times[later[0]] if later else None,
    )


def list_catalog(layout: catalog.ServerLayout, after: Optional[str] = None) -> Dict[str, object]:
    """What the mirror needs to know of a server's catalog (see the module's docstring). A new server's
    missing files are empty answers; a damaged identity.json or xlog.db raises."""
    return dict(
        server=layout.server,
        identity=identityfile.read_identity(layout.identity_file),
        backups=_backups(layout),
        wal=_wal_summary(layout, after),
    )


def _one_line(error):
    return ' '.join(str(error).split())


def main(
    argv: Optional[Sequence[str]] = None,
    environ: Optional[Mapping[str, str]] = None,
    stdin: Optional[BinaryIO] = None,
    stdout: Optional[BinaryIO] = None,
    stderr: Optional[TextIO] = None,
) -> int:
    environ = os.environ if environ is None else environ
    stdout = stdout or sys.stdout.buffer
    stderr = stderr or sys.stderr
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('--barman-home', required=True)
    parser.add_argument(
        '--server', action='append', required=True, help='a server whose catalog the key may read; repeat for more'
    )
    args = parser.parse_args(argv)
    try:
        layouts = dict((server, catalog.ServerLayout(args.barman_home, server)) for server in args.server)
    except catalog.InvalidName as error:  # the authorized_keys line is wrong, not the request
        stderr.write('%s: %s\n' % (PROG, _one_line(error)))
        return EXIT_REFUSED
    try:
        request = parse_request(environ.get('SSH_ORIGINAL_COMMAND'), layouts)
    except RequestError as error:
        stderr.write('%s: %s; %s\n' % (PROG, _one_line(error), USAGE % ', '.join(layouts)))
        return EXIT_REFUSED
    if request.verb == 'list':
        try:
            answer = list_catalog(request.layout, request.wal)
        except (BarmanError, OSError) as error:
            stderr.write('%s: cannot list %s: %s\n' % (PROG, request.layout.server, _one_line(error)))
            return EXIT_TEMPORARY
        stdout.write(json.dumps(answer).encode('utf-8') + b'\n')
        stdout.flush()
        return EXIT_OK
    stdout.flush()
    stderr.flush()
    try:
        # rsync gets the argv rebuilt from what was checked, and nothing else.
        os.execvp('rsync', request.rsync_argv)  # noqa: S606 - no shell is the point
    except OSError as error:
        stderr.write('%s: cannot run rsync: %s\n' % (PROG, _one_line(error)))
        return EXIT_TEMPORARY
    return EXIT_TEMPORARY  # not reached: execvp does not return
