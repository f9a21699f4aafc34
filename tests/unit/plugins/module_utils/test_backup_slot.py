"""lockfile.BackupSlot: a counting semaphore of flock files per barman_home (barman_backup_concurrency)."""

import os

import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import lockfile


def test_no_more_than_the_limit_hold_a_slot(tmp_path):
    first = lockfile.BackupSlot(str(tmp_path), 2).acquire()
    second = lockfile.BackupSlot(str(tmp_path), 2).acquire()
    assert first.lock.path != second.lock.path
    with pytest.raises(lockfile.LockBusy) as busy:
        lockfile.BackupSlot(str(tmp_path), 2, wait_seconds=0.2, poll_seconds=0.05).acquire()
    assert busy.value.code == 'LOCK_BUSY'
    freed = first.lock.path
    first.release()
    third = lockfile.BackupSlot(str(tmp_path), 2, wait_seconds=0.2, poll_seconds=0.05).acquire()
    assert third.lock.path == freed
    second.release()
    third.release()


def test_each_barman_home_has_its_own_quota(tmp_path):
    homes = [tmp_path / 'backup1', tmp_path / 'backup2']
    for home in homes:
        home.mkdir()
    held = [lockfile.BackupSlot(str(home), 1, wait_seconds=0).acquire() for home in homes]
    assert [os.path.dirname(slot.lock.path) for slot in held] == [str(home) for home in homes]
    for slot in held:
        slot.release()


def test_a_waiter_is_told_once_and_gets_the_freed_slot(tmp_path):
    told = []
    holder = lockfile.BackupSlot(str(tmp_path), 1).acquire()
    waiter = lockfile.BackupSlot(str(tmp_path), 1, waiting=told.append, wait_seconds=0.3, poll_seconds=0.05)
    with pytest.raises(lockfile.LockBusy):
        waiter.acquire()
    assert told == [1]
    holder.release()
    with waiter:
        assert waiter.lock is not None
    assert waiter.lock is None


def test_zero_means_no_limit(tmp_path):
    slots = [lockfile.BackupSlot(str(tmp_path), 0).acquire() for _count in range(5)]
    assert all(slot.lock is None for slot in slots)
    assert not os.listdir(str(tmp_path))


def test_slot_files_never_collide_with_a_server_lock(tmp_path):
    slot = lockfile.BackupSlot(str(tmp_path), 1).acquire()
    # A server may not be named barman: '.barman-<operation>.lock' is never a server's lock file.
    assert os.path.basename(slot.lock.path) == '.barman-backup-slot-1.lock'
    slot.release()
