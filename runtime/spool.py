# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sender's claims and delivery notes, beside the server's key (<key>.spool/).

A delivery note holds the file's stat_key and the target it went to (target_of(): ``--ssh``
user@host, a colon, ``--port``): the sender's shell launcher (roles/common/templates/
wal-sender.sh.j2) reads it to answer archive_command for a delivered file without starting
Python. A note answers only a put of the same target: after the server moves to another backup
server, an agent still sending to the old one must not answer for the new one.
"""

import fcntl
import os
import time
from typing import Container, Optional

STALE_SECONDS = 86400


def try_lock(path: str) -> Optional[int]:
    """An exclusive flock on ``path`` (made 0600), held by the open fd returned; None when another process
    holds it. The sender's agent and the recovery's fetcher each run once per spool this way."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def stat_key(stat: os.stat_result) -> str:
    """Size and modification time, as ``stat -c '%s %.9Y'`` prints them (the launcher compares)."""
    seconds, nanoseconds = divmod(stat.st_mtime_ns, 1000000000)
    return '%d %d.%09d' % (stat.st_size, seconds, nanoseconds)


def target_of(ssh: str, port: Optional[int]) -> str:
    """Where a note's file went, as the launcher spells it from its arguments (``--ssh X --port Y``)."""
    return '%s:%s' % (ssh, port if port else '')


class Spool:
    """Claims and delivery notes of one server's files, beside its key (<key>.spool/, 0700), for the
    files sent to ``target`` (target_of())."""

    def __init__(self, identity_file: str, target: str = '', create: bool = True) -> None:
        self.path = identity_file + '.spool'
        self.target = target
        if create:
            os.makedirs(self.path, mode=0o700, exist_ok=True)

    def _file(self, name, kind):
        return os.path.join(self.path, '%s.%s' % (name, kind))

    def claim(self, name: str) -> bool:
        """True if this process may send ``name`` now; False while a live process sends it."""
        path = self._file(name, 'claim')
        for _attempt in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                if self._holder_alive(path):
                    return False
                self._unlink(path)  # its sender died
                continue
            os.write(fd, str(os.getpid()).encode('ascii'))
            os.close(fd)
            return True
        return False

    def claimed(self, name: str) -> bool:
        """True while a live process holds the claim of ``name``."""
        return self._holder_alive(self._file(name, 'claim'))

    def _holder_alive(self, path):
        try:
            with open(path) as handle:
                pid = int(handle.read())
            if pid <= 0:  # damaged (kill would signal a whole process group)
                return False
            os.kill(pid, 0)
        except (OSError, ValueError):  # gone, or empty: its writer died before writing its pid
            return False
        return True

    def release(self, name: str) -> None:
        """Drop this process's claim of ``name`` (only its own: another's may stand in a new spool)."""
        path = self._file(name, 'claim')
        try:
            with open(path) as handle:
                if handle.read() != str(os.getpid()):
                    return
        except FileNotFoundError:
            return
        self._unlink(path)

    def note_delivered(self, name: str, stat_key: str) -> None:
        self._note(name, 'done', '%s %s' % (stat_key, self.target))

    def note_given_up(self, name: str) -> None:
        """The agent could not deliver ``name`` (refused, or an error): it leaves the file to
        archive_command, which sends it itself and reports why, and does not send it again."""
        self._note(name, 'failed', '')

    def given_up(self, name: str) -> bool:
        return os.path.exists(self._file(name, 'failed'))

    def _note(self, name, kind, text):
        tmp = self._file(name, kind + '.tmp')
        with open(tmp, 'w') as handle:
            handle.write(text)
        os.rename(tmp, self._file(name, kind))

    def was_delivered(self, name: str, path: str) -> bool:
        """True if ``name`` was delivered to this target as the file at ``path`` is now.

        The note stays while PostgreSQL still lists the file as ready (until it renames .ready to
        .done after this answer): were it gone sooner, the agent would send the file again. The
        agent drops it later (forget_old)."""
        note = self._file(name, 'done')
        try:
            with open(note) as handle:
                noted = handle.read()
        except FileNotFoundError:
            return False
        key = stat_key(os.stat(path))
        if noted == '%s %s' % (key, self.target):
            return True
        if not noted.startswith(key + ' '):
            self._unlink(note)  # about another file of that name
        return False  # delivered elsewhere (another target): the put sends it itself

    def delivered(self, name: str) -> bool:
        """True if a note says ``name`` went to this target (a note of another target does not count)."""
        try:
            with open(self._file(name, 'done')) as handle:
                noted = handle.read()
        except FileNotFoundError:
            return False
        return noted.split(' ', 2)[2:] == [self.target]

    def delivered_elsewhere(self, name: str) -> bool:
        """True if a note says ``name`` went to another target (an agent of a former archive_command)."""
        return os.path.exists(self._file(name, 'done')) and not self.delivered(name)

    def forget_old(self, still_ready: Optional[Container[str]] = None) -> None:
        """Drop the claims of dead processes, and the notes of files no longer in ``still_ready``
        (names; None: notes older than a day). Delivery notes and given-up notes alike."""
        for entry in os.listdir(self.path):
            path = os.path.join(self.path, entry)
            name, _dot, kind = entry.rpartition('.')
            try:
                if kind in ('done', 'failed') and (
                    name not in still_ready
                    if still_ready is not None
                    else time.time() - os.stat(path).st_mtime > STALE_SECONDS
                ):
                    os.unlink(path)
                elif kind == 'claim' and not self._holder_alive(path):
                    os.unlink(path)
            except OSError:
                pass

    @staticmethod
    def _unlink(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
