# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sender's bookkeeping for its look-ahead agent: claims, delivery notes, the ready list."""

import io
import os
import subprocess

import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import walsender

NAME = '000000010000000000000005'


@pytest.fixture
def key(tmp_path):
    path = tmp_path / 'barman_pg1'
    path.write_text('not a real key')
    return str(path)


@pytest.fixture
def pg_wal(tmp_path):
    directory = tmp_path / 'pg_wal'
    (directory / 'archive_status').mkdir(parents=True)
    return directory


def test_one_claim_at_a_time_and_a_dead_holders_claim_is_taken_over(key):
    spool = walsender.Spool(key)
    assert oct(os.stat(spool.path).st_mode & 0o777) == '0o700'
    assert spool.claim(NAME)
    assert not spool.claim(NAME)  # held by this (live) process
    spool.release(NAME)
    assert spool.claim(NAME)
    dead = subprocess.Popen(['true'])
    dead.wait()
    with open(os.path.join(spool.path, NAME + '.claim'), 'w') as handle:
        handle.write(str(dead.pid))
    assert spool.claim(NAME), 'the claim of a process that is gone must not block'


def test_a_delivery_note_counts_once_and_only_for_the_same_file(key, pg_wal):
    spool = walsender.Spool(key)
    segment = pg_wal / NAME
    segment.write_bytes(b'x' * 100)
    spool.note_delivered(NAME, walsender._stat_key(os.stat(str(segment))))
    assert spool.delivered(NAME)
    assert spool.take_delivered(NAME, str(segment))
    assert not spool.take_delivered(NAME, str(segment)), 'a note is used up'
    spool.note_delivered(NAME, walsender._stat_key(os.stat(str(segment))))
    segment.write_bytes(b'y' * 101)  # not the file that was delivered
    assert not spool.take_delivered(NAME, str(segment))


def test_put_of_a_file_the_agent_delivered_returns_at_once(key, pg_wal):
    segment = pg_wal / NAME
    segment.write_bytes(b'x' * 100)
    walsender.Spool(key).note_delivered(NAME, walsender._stat_key(os.stat(str(segment))))
    argv = ['--ssh', 'barman@192.0.2.1', '--identity-file', key, '--known-hosts', key, 'put', str(segment)]
    assert walsender.main(argv, stderr=io.StringIO()) == 0  # no ssh at all: 192.0.2.1 is unreachable


def test_ready_names_in_the_order_postgresql_archives(pg_wal):
    for name in ('000000020000000000000007', '00000002.history', '000000010000000000000006', 'junk', 'x.history'):
        (pg_wal / 'archive_status' / (name + '.ready')).write_text('')
    (pg_wal / 'archive_status' / '000000010000000000000001.done').write_text('')
    assert walsender.ready_names(str(pg_wal)) == [
        '00000002.history',
        '000000010000000000000006',
        '000000020000000000000007',
    ]


def test_forget_old_drops_dead_claims_and_old_notes(key):
    spool = walsender.Spool(key)
    spool.note_delivered(NAME, '1 2')
    note = os.path.join(spool.path, NAME + '.done')
    os.utime(note, (0, 0))
    with open(os.path.join(spool.path, 'X.claim'), 'w') as handle:
        handle.write('999999999')
    spool.note_delivered('000000010000000000000006', '1 2')
    spool.forget_old()
    assert sorted(os.listdir(spool.path)) == ['000000010000000000000006.done']
