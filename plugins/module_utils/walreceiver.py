# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The WAL receiver: the forced command of a PostgreSQL server's restricted key on the backup server.

sshd runs it for every connection made with that key, whatever command the client asked for; the
request is in SSH_ORIGINAL_COMMAND and only two are honoured, for the one server fixed by the key:
  put NAME SIZE   stdin: SIZE bytes, then the sha256 of those bytes in hex and a newline
  get NAME        stdout: the file's original content
Exit codes stay below 126 so that PostgreSQL counts a failure and retries (see EXIT_*).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import os
import re
import shlex
import sys
import time

from ansible_collections.barman.postgresql.plugins.module_utils import archive, catalog, wal
from ansible_collections.barman.postgresql.plugins.module_utils.errors import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_TEMPORARY,
    BarmanError,
)

MAX_SEGMENT_BYTES = 1024 * 1024 * 1024
USAGE = "this key only accepts 'put NAME SIZE' and 'get NAME' for WAL files of its server"


class RequestError(BarmanError):
    """The client asked for something this key does not allow."""


def parse_request(command):
    """(verb, name, size) from SSH_ORIGINAL_COMMAND, or RequestError."""
    try:
        words = shlex.split(command or '')
    except ValueError:
        words = []
    if len(words) == 3 and words[0] == 'put' and re.match(r'[0-9]{1,12}\Z', words[2]):
        size = int(words[2])
        if size > MAX_SEGMENT_BYTES:
            raise RequestError('refused put of %d bytes: more than a WAL segment can be' % size, USAGE)
        return 'put', wal.parse_wal_name(words[1]).name, size
    if len(words) == 2 and words[0] == 'get':
        return 'get', wal.parse_wal_name(words[1]).name, None
    raise RequestError('refused request %r' % (command or ''), USAGE)


def _read_digest_line(stream):
    def reader():
        line = stream.readline(80).strip().decode('ascii', errors='replace')
        return line

    return reader


def _process_in_background(wal_archive, compression):
    """Compress and index what arrived, after the sender has its answer (double fork, no stdio)."""
    sys.stdout.flush()
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if os.fork():
        return
    os.setsid()
    if os.fork():
        os._exit(0)
    try:
        wal_archive.process_incoming(compression, wait_seconds=0)
    except catalog.LockBusy:
        pass  # another processor runs: it takes this file too, or the next delivery's will
    except Exception as error:  # nobody is listening any more: leave a trace for check to report
        with open(wal_archive.layout.process_log, 'a') as log:
            log.write('%s %s\n' % (time.strftime('%Y-%m-%dT%H:%M:%S%z'), error))
    os._exit(0)


def main(argv=None, environ=None, stdin=None, stdout=None, stderr=None):
    environ = os.environ if environ is None else environ
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    stderr = stderr or sys.stderr
    parser = argparse.ArgumentParser(prog='barman-wal-receiver', description=__doc__)
    parser.add_argument('--barman-home', required=True)
    parser.add_argument('--server', required=True)
    parser.add_argument('--compression', default='gzip', choices=archive.COMPRESSIONS)
    parser.add_argument('--no-background', action='store_true', help='do not process incoming/ after a put')
    args = parser.parse_args(argv)
    try:
        wal_archive = archive.WalArchive(args.barman_home, args.server)
        verb, name, size = parse_request(environ.get('SSH_ORIGINAL_COMMAND'))
        if verb == 'get':
            wal_archive.send(name, stdout)
            stdout.flush()
            return EXIT_OK
        wal_archive.receive(name, size, stdin, _read_digest_line(stdin))
    except archive.WalNotFound as error:
        stderr.write('barman-wal-receiver: %s\n' % error)
        return EXIT_NOT_FOUND
    except (ValueError, RequestError, archive.DuplicateWal) as error:
        stderr.write('barman-wal-receiver: %s\n' % error)
        return EXIT_REFUSED
    except (BarmanError, OSError) as error:
        stderr.write('barman-wal-receiver: %s\n' % error)
        return EXIT_TEMPORARY
    if not args.no_background:
        _process_in_background(wal_archive, args.compression)
    return EXIT_OK
