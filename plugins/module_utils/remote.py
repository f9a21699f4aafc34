# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Commands and rsync copies to and from one host, for one operation (a backup, a recovery, a mirror ...).

Every ssh command and rsync of the operation goes through one shared SSH connection (ControlMaster on the
operation's ControlPath, from ssh.operation_control_path), which :meth:`Remote.close` ends. Without a
target the same calls run on this host. Failures raise BarmanError subclasses saying what failed and
what to do; an exit code that is a command's answer is returned, not raised.
"""

import os
import subprocess
import time
from typing import Dict, List, Optional, Sequence, Tuple

from ansible_collections.barman.postgresql.plugins.module_utils import rsync, ssh
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

# ssh's own exit code: the connection failed, not the command (which cannot choose 255 through ssh).
SSH_EXIT_FAILED = 255
#: The message of a failed rsync (%-fields: what, code, meaning, stderr); Remote.rsync's ``failure``.
RSYNC_FAILURE = 'rsync of %(what)s failed (exit %(code)d, %(meaning)s): %(stderr)s'
# The end of rsync's or ssh's stderr that goes into a message.
STDERR_SHOWN = 2000

RsyncStats = Dict[str, Optional[int]]
ListedFile = Tuple[int, float, str]


class CommandFailed(BarmanError):
    """ssh could not reach the host, or a command that had to succeed there did not."""


def _text(data: bytes) -> str:
    return data.decode(errors='replace').strip()


def _rsync_env() -> Dict[str, str]:
    # rsync's statistics and listings in the number and date formats parse_rsync_stats and list_files read.
    return dict(os.environ, LC_ALL='C')


class Remote:
    """One host reached over SSH as ``target`` (an ssh.SshTarget), or this host when ``target`` is None.

    ``identity_file``: the key to use instead of the user's default ones.
    ``control_path``: the operation's ControlPath (ssh.operation_control_path), shared by every call;
    None for a connection each. ``known_hosts_file``: ssh's UserKnownHostsFile, beside the system one.
    Thread-safe: parallel rsync workers share one Remote. A context manager: leaving it closes.
    """

    def __init__(
        self,
        target: Optional[ssh.SshTarget],
        control_path: Optional[str],
        known_hosts_file: Optional[str] = None,
        identity_file: Optional[str] = None,
    ) -> None:
        self.target = target
        self._ssh_options = dict(known_hosts_file=known_hosts_file, control_path=control_path)
        if identity_file is not None:  # a key of its own, e.g. a mirror's to its primary's catalog reader
            self._ssh_options['identity_file'] = identity_file
        self._rsh = None if target is None else ssh.rsync_rsh(port=target.port, **self._ssh_options)

    def __enter__(self) -> 'Remote':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def path(self, path: str) -> str:
        """``path`` on the host as an rsync source or destination (``user@host:path``, or ``path`` itself)."""
        return path if self.target is None else ssh.remote_path(self.target, path)

    def _execute(self, argv: Sequence[str]) -> subprocess.CompletedProcess:
        if self.target is not None:
            argv = ssh.ssh_argv(self.target, argv, **self._ssh_options)
        return subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)

    def run(self, argv: Sequence[str], errors: str = 'replace') -> Tuple[int, str, str]:
        """Run ``argv`` on the host: (exit code, stdout, stderr), stdout decoded from UTF-8 with ``errors``.

        Any exit code is the command's answer, except ssh's 255 (the host was not reached), which raises.
        """
        proc = self._execute(argv)
        if proc.returncode == SSH_EXIT_FAILED and self.target is not None:
            raise CommandFailed(
                'cannot reach %s@%s over SSH: %s' % (self.target.user, self.target.host, _text(proc.stderr)),
                'Check that the host is up and that the setup playbook exchanged the keys',
                code='SSH_FAILED',
            )
        return proc.returncode, proc.stdout.decode('utf-8', errors=errors), _text(proc.stderr)

    def check_output(self, argv: Sequence[str], errors: str = 'replace') -> str:
        """Run ``argv`` on the host; its stdout (decoded as in :meth:`run`), or CommandFailed unless it exits 0."""
        proc = self._execute(argv)
        if proc.returncode == 0:
            return proc.stdout.decode('utf-8', errors=errors)
        if self.target is None:
            # No ssh involved, and no code of its own: the message says which command failed.
            raise CommandFailed(
                '%s failed (exit %d): %s' % (argv[0], proc.returncode, _text(proc.stderr)), code='BARMAN_ERROR'
            )
        raise CommandFailed(
            'ssh to %s@%s failed (exit %d): %s'
            % (self.target.user, self.target.host, proc.returncode, _text(proc.stderr)),
            'Check that the setup playbook ran (key exchange) and that the host is up',
            code='SSH_FAILED',
        )

    def rsync(
        self,
        source: str,
        destination: str,
        what: str,
        vanished_ok: bool = True,
        failure: str = RSYNC_FAILURE,
        **rsync_argv_kwargs,
    ) -> Tuple[RsyncStats, float]:
        """Copy ``source`` to ``destination`` (local paths, or :meth:`path` for the host's side).

        Returns rsync's statistics (rsync.parse_rsync_stats) and the seconds the copy took. Raises
        rsync.RsyncFailed with rsync's meaning and hint (``failure`` % what, code, meaning, stderr)
        unless the exit code is ok; vanished source files (24) are ok when ``vanished_ok``, as during a
        live backup. ``rsync_argv_kwargs`` go to rsync.rsync_argv (excludes, link_dest, extra ...).
        """
        argv = rsync.rsync_argv(source, destination, rsh=self._rsh, **rsync_argv_kwargs)
        started = time.monotonic()
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_rsync_env(), check=False)
        result = rsync.interpret_rsync_exit(proc.returncode, vanished_ok=vanished_ok)
        if not result.ok:
            raise rsync.RsyncFailed(
                failure
                % dict(
                    what=what,
                    code=proc.returncode,
                    meaning=result.meaning,
                    stderr=_text(proc.stderr)[-STDERR_SHOWN:],
                ),
                result.hint or 'See the rsync message above',
                code='RSYNC_FAILED',
            )
        stats = rsync.parse_rsync_stats(proc.stdout.decode(errors='replace'))
        return stats, time.monotonic() - started

    def list_files(self, source: str, excludes: Sequence[str] = ()) -> List[ListedFile]:
        """[(size, mtime, path)] of the files and symlinks rsync would copy from ``source``, ``excludes`` applied.

        ``source`` as for :meth:`rsync`; paths are relative to it (a directory given with its trailing '/').
        """
        # rsync lists a lone source: the destination operand rsync_argv requires is left off.
        argv = rsync.rsync_argv(source, source, rsh=self._rsh, excludes=excludes, extra=['--list-only', '--recursive'])[
            :-1
        ]
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_rsync_env(), check=False)
        if not rsync.interpret_rsync_exit(proc.returncode).ok:
            raise rsync.RsyncFailed('listing %s failed: %s' % (source, _text(proc.stderr)), code='RSYNC_FAILED')
        files = []
        for line in proc.stdout.decode('utf-8', errors='surrogateescape').splitlines():
            fields = line.split(None, 4)
            if len(fields) == 5 and fields[0][0] in '-l':
                name = fields[4].split(' -> ', 1)[0] if fields[0][0] == 'l' else fields[4]
                mtime = time.mktime(time.strptime(fields[2] + ' ' + fields[3], '%Y/%m/%d %H:%M:%S'))
                files.append((int(fields[1].replace(',', '')), mtime, name))
        return files

    def close(self) -> None:
        """End the shared connection, which would otherwise linger for ControlPersist seconds."""
        if self.target is None or self._ssh_options['control_path'] is None:
            return
        argv = ssh.control_exit_argv(self.target, **self._ssh_options)
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
