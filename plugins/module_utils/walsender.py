# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The WAL sender: PostgreSQL's archive_command and restore_command, talking to the WAL receiver.

  archive_command = 'barman-wal-sender --ssh barman@backup ... put %p'
  restore_command = 'barman-wal-sender --ssh barman@backup ... get %f %p'

One SSH connection per server is kept open for a minute (ControlMaster), so that a segment costs a
round trip on it rather than a new handshake. Exit codes stay below 126, so PostgreSQL counts
failures and retries; ssh's own 255 becomes EXIT_TEMPORARY.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import hashlib
import os
import subprocess
import sys

from ansible_collections.barman.postgresql.plugins.module_utils import ssh, wal
from ansible_collections.barman.postgresql.plugins.module_utils.errors import (
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    EXIT_TEMPORARY,
)

CHUNK = 1024 * 1024
SSH_FAILED = 255


def _ssh_argv(args, remote_argv):
    user, host = args.ssh.rsplit('@', 1) if '@' in args.ssh else ('', args.ssh)
    target = ssh.validate_ssh_target(user, host, args.port)
    return ssh.ssh_argv(
        target,
        remote_argv,
        identity_file=args.identity_file,
        known_hosts_file=args.known_hosts,
        # One master per key: two clusters of one host must never share a connection.
        control_path=args.identity_file + '.cm-%C',
    )


def _exit_code(code, stderr):
    if code == SSH_FAILED or code < 0 or code > 125:
        stderr.write('barman-wal-sender: ssh failed (exit %d); PostgreSQL will retry\n' % code)
        return EXIT_TEMPORARY
    return code


def put(args, stderr):
    name = os.path.basename(args.path)
    wal.parse_wal_name(name)
    with open(args.path, 'rb') as source:
        size = os.fstat(source.fileno()).st_size
        proc = subprocess.Popen(_ssh_argv(args, ['put', name, str(size)]), stdin=subprocess.PIPE)
        digest = hashlib.sha256()
        try:
            for block in iter(lambda: source.read(CHUNK), b''):
                digest.update(block)
                proc.stdin.write(block)
            proc.stdin.write(digest.hexdigest().encode('ascii') + b'\n')
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the receiver refused early; its exit code says why
    return _exit_code(proc.wait(), stderr)


def get(args, stderr):
    name = wal.parse_wal_name(args.name).name
    destination = os.path.abspath(args.path)
    partial = '%s.barman-partial' % destination
    with open(partial, 'wb') as target:
        code = subprocess.call(_ssh_argv(args, ['get', name]), stdout=target)
    if code != 0:
        os.unlink(partial)
        return _exit_code(code, stderr)
    # Never leave a half file under the name PostgreSQL reads.
    os.rename(partial, destination)
    return 0


def main(argv=None, stderr=None):
    stderr = stderr or sys.stderr
    parser = argparse.ArgumentParser(prog='barman-wal-sender', description=__doc__)
    parser.add_argument('--ssh', required=True, help='user@host of the backup server')
    parser.add_argument('--port', type=int)
    parser.add_argument('--identity-file', required=True)
    parser.add_argument('--known-hosts', required=True)
    commands = parser.add_subparsers(dest='command')
    commands.required = True
    put_parser = commands.add_parser('put', help='archive the WAL file at PATH (%%p)')
    put_parser.add_argument('path')
    get_parser = commands.add_parser('get', help='restore the WAL file NAME (%%f) to PATH (%%p)')
    get_parser.add_argument('name')
    get_parser.add_argument('path')
    args = parser.parse_args(argv)
    try:
        return put(args, stderr) if args.command == 'put' else get(args, stderr)
    except ValueError as error:
        stderr.write('barman-wal-sender: %s\n' % error)
        return EXIT_REFUSED
    except OSError as error:
        stderr.write('barman-wal-sender: %s\n' % error)
        return EXIT_TEMPORARY if not isinstance(error, FileNotFoundError) else EXIT_NOT_FOUND
