# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lock files Barman itself uses, ``<barman_home>/.<server>-<operation>.lock`` (for example
``backup``, ``xlogdb``, ``archive-wal``), taken with ``flock`` so that Barman and this collection exclude
each other; the first line is the holder's pid, as Barman expects."""

import datetime
import errno
import fcntl
import os
import time
from typing import Any, Dict, Optional, Union

from ansible_collections.barman.postgresql.plugins.module_utils.catalog import (
    CatalogError,
    ServerLayout,
    now_utc,
    validate_operation,
)


class LockBusy(CatalogError):
    """Another process holds the lock."""

    code = 'LOCK_BUSY'


class LockError(CatalogError):
    """The lock file cannot be opened."""

    code = 'LOCK_FAILED'


# Locks


def read_lock_holder(path: str) -> Dict[str, Any]:
    """What the lock file says about its last holder: dict(pid, operation, started), values may be None."""
    holder = {'pid': None, 'operation': None, 'started': None}
    try:
        with open(path, 'r', encoding='utf-8', errors='replace') as handle:
            lines = handle.read(4096).splitlines()
    except OSError:
        return holder
    if lines and lines[0].strip().isdigit():
        holder['pid'] = int(lines[0])
    if len(lines) > 1:
        holder['operation'] = lines[1].strip() or None
    if len(lines) > 2:
        holder['started'] = lines[2].strip() or None
    return holder


def _age_seconds(started: Optional[str]) -> Optional[int]:
    """Seconds since a holder's start time (as acquire writes it), None when it cannot be read: a playbook
    tells a run in progress from a lock held for too long by it."""
    try:
        then = datetime.datetime.fromisoformat(started or '')
    except ValueError:
        return None
    if then.tzinfo is None:
        return None
    return max(0, int((now_utc() - then).total_seconds()))


class ServerLock:
    """Exclusive ``flock`` on a per-server, per-operation lock file, as a context manager.

    ``layout_or_path`` is a ServerLayout (the file is ``layout.lock_path(operation)``, the one
    Barman uses) or the lock file path. The kernel drops the lock when the holder exits, however
    it dies. The file keeps the holder's pid (first line, as Barman writes it), the operation and
    the start time. A busy lock raises LockBusy, after retrying for ``wait_seconds``.
    """

    def __init__(
        self,
        layout_or_path: Union[ServerLayout, str],
        operation: str,
        wait_seconds: Optional[float] = 0,
        poll_seconds: float = 0.1,
    ) -> None:
        self.operation = validate_operation(operation)
        if isinstance(layout_or_path, ServerLayout):
            self.path = layout_or_path.lock_path(operation)
        else:
            self.path = os.path.abspath(layout_or_path)
        self.wait_seconds = wait_seconds
        self.poll_seconds = poll_seconds
        self.fd = None

    def _open(self):
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise LockError(
                'Cannot open lock file %s: %s' % (self.path, exc.strerror),
                'Check that its directory exists and that this user can write there',
                lock_path=self.path,
            ) from None

    def _try_lock(self, fd):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                return False
            raise
        return True

    def _busy(self):
        holder = read_lock_holder(self.path)
        who = 'process %s' % holder['pid'] if holder['pid'] else 'another process'
        details = ', '.join('%s %s' % (key, holder[key]) for key in ('operation', 'started') if holder[key] is not None)
        waited = ' after waiting %ss' % self.wait_seconds if self.wait_seconds else ''
        hint = 'Wait for it to finish and retry'
        if holder['pid']:
            hint += ', or check what pid %s is (ps -p %s): the lock is released as soon as that process exits' % (
                holder['pid'],
                holder['pid'],
            )
        return LockBusy(
            'The %s lock of %s is held by %s%s%s'
            % (self.operation, self.path, who, ' (%s)' % details if details else '', waited),
            hint,
            lock_path=self.path,
            operation=self.operation,
            holder_pid=holder['pid'],
            holder_operation=holder['operation'],
            holder_started=holder['started'],
            holder_age_seconds=_age_seconds(holder['started']),
        )

    def acquire(self) -> 'ServerLock':
        if self.fd is not None:
            return self
        fd = self._open()
        try:
            deadline = time.monotonic() + (self.wait_seconds or 0)
            while not self._try_lock(fd):
                if time.monotonic() >= deadline:
                    raise self._busy()
                time.sleep(self.poll_seconds)
            started = now_utc().replace(microsecond=0).isoformat()
            content = ('%d\n%s\n%s\n' % (os.getpid(), self.operation, started)).encode('utf-8')
            os.ftruncate(fd, 0)
            os.pwrite(fd, content, 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> 'ServerLock':
        return self.acquire()

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        self.release()


# How many backups run at once on one backup server


class BackupSlot:
    """One of ``limit`` backup slots of a barman_home, as a context manager: a counting semaphore made of
    ``limit`` flock files ``<barman_home>/.barman-backup-slot-<n>.lock``, so that every backup on a backup
    server, whichever run or playbook started it, counts against that server's own quota.

    A server may not be named ``barman``, so these names never collide with a server's lock. ``limit`` 0
    (or less) means no limit. Waiting polls every ``poll_seconds``, forever unless ``wait_seconds`` is given
    (LockBusy then); ``waiting`` is called once with the number of slots if none is free at first.
    The kernel frees a slot when its holder exits, however it dies.
    """

    def __init__(
        self,
        barman_home: str,
        limit: int,
        waiting: Optional[Any] = None,
        wait_seconds: Optional[float] = None,
        poll_seconds: float = 0.1,
    ) -> None:
        self.limit = int(limit or 0)
        self.paths = [
            os.path.join(os.path.abspath(barman_home), '.barman-backup-slot-%d.lock' % n)
            for n in range(1, self.limit + 1)
        ]
        self.waiting = waiting
        self.wait_seconds = wait_seconds
        self.poll_seconds = poll_seconds
        self.lock = None  # the ServerLock of the slot held
        self.waited_seconds = 0.0

    def acquire(self) -> 'BackupSlot':
        if self.lock is not None or self.limit <= 0:
            return self
        started = time.monotonic()
        # Start at a slot chosen by pid, so that waiters do not all poll slot 1 first.
        first = os.getpid() % self.limit
        order = self.paths[first:] + self.paths[:first]
        told = False
        while True:
            for path in order:
                lock = ServerLock(path, 'backup')
                try:
                    self.lock = lock.acquire()
                except LockBusy:
                    continue
                self.waited_seconds = time.monotonic() - started
                return self
            if self.wait_seconds is not None and time.monotonic() - started >= self.wait_seconds:
                raise LockBusy(
                    'All %d backup slots of %s are taken after waiting %ss'
                    % (self.limit, os.path.dirname(self.paths[0]), self.wait_seconds),
                    'Wait for the running backups to end, or raise barman_backup_concurrency',
                    lock_path=self.paths[0],
                    operation='backup-slot',
                )
            if not told and self.waiting is not None:
                self.waiting(self.limit)
                told = True
            time.sleep(self.poll_seconds)

    def release(self) -> None:
        if self.lock is not None:
            lock, self.lock = self.lock, None
            lock.release()

    def __enter__(self) -> 'BackupSlot':
        return self.acquire()

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        self.release()
