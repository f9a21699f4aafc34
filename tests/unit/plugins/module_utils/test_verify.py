# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""verify: which backup is verified, what is refused before anything is copied, how a file names its relation
(the steps themselves run on the lab: tests/integration/test_verify.py)."""

import datetime
import os

import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import (
    catalog,
    infofile,
    server_catalog,
    verify,
    verifyfile,
)

UTC = datetime.timezone.utc
FIRST, SECOND, THIRD = '20261120T010000', '20261121T010000', '20261122T010000'


@pytest.fixture
def layout(tmp_path):
    layout = catalog.ServerLayout(str(tmp_path), 'pg1')
    catalog.ensure_directories(layout)
    for number, (backup_id, status) in enumerate([(FIRST, 'DONE'), (SECOND, 'DONE'), (THIRD, 'FAILED')]):
        end = datetime.datetime(2026, 11, 20 + number, 1, 5, tzinfo=UTC)
        info = dict(
            status=status,
            version=150004,
            pgdata='/srv/pg1/data',
            begin_wal='00000001000000000000000%d' % (2 + number),
            end_wal='00000001000000000000000%d' % (2 + number),
            begin_time=end - datetime.timedelta(minutes=5),
            end_time=end,
            timeline=1,
            xlog_segment_size=16 << 20,
        )
        infofile.write_backup_info(layout.backup_info_path(backup_id), info)
    return layout


def passed(layout, backup_id, result=verifyfile.PASSED):
    verifyfile.write_verification(
        layout, backup_id, dict(result=result, verified_at='2026-11-23T00:00:00Z', steps=[], failures=[])
    )


def choose(layout, requested=None):
    return verify.choose_backup(server_catalog.ServerCatalog(layout), requested)


def test_the_newest_done_backup_without_a_passing_verification_is_chosen(layout):
    assert choose(layout)[0] == SECOND
    passed(layout, SECOND)
    assert choose(layout)[0] == FIRST
    passed(layout, FIRST, verifyfile.FAILED)
    assert choose(layout)[0] == FIRST, 'a FAILED one is verified again'
    passed(layout, FIRST)
    backup_id, why = choose(layout)
    assert backup_id is None and 'every DONE backup passed' in why and SECOND in why


def test_a_backup_asked_for_must_be_done(layout):
    assert choose(layout, 'oldest')[0] == FIRST
    with pytest.raises(verify.BarmanError) as refused:
        choose(layout, THIRD)
    assert refused.value.code == 'BACKUP_NOT_DONE'
    with pytest.raises(verify.BarmanError) as refused:
        choose(layout, '20261101T000000')
    assert refused.value.code == 'NO_SUCH_BACKUP'


def test_a_server_without_a_done_backup_is_refused(layout):
    for backup_id in (FIRST, SECOND):
        os.unlink(layout.backup_info_path(backup_id))
    with pytest.raises(verify.BarmanError) as refused:
        choose(layout)
    assert refused.value.code == 'NO_DONE_BACKUP'


def run_on(layout, tmp_path, **given):
    params = dict(
        barman_home=layout.barman_home,
        server='pg1',
        directory=str(tmp_path / 'scratch'),
        port=7441,
        original_port=5441,
        host=None,
        user='postgres',
        ssh_port=None,
        pg_bindir=None,
        replay='immediate',
    )
    params.update(given)
    info = server_catalog.ServerCatalog(layout).infos[FIRST]
    return verify.Verification(params, layout, FIRST, info, None)


@pytest.mark.parametrize(
    'given, words',
    [
        (dict(port=5441), "port 5441, the original server's"),
        (dict(directory='/srv/pg1'), 'contain one another'),
        (dict(directory='/srv/pg1/data/verify'), 'contain one another'),
        (dict(directory='/tmp/v', pg_bindir='/nonexistent/bin'), 'has no pg_ctl, pg_controldata, pg_checksums'),
        (dict(directory='/tmp/' + 'v' * 80), 'longer than a Unix socket path may be'),
    ],
)
def test_the_verification_host_is_refused_before_anything_is_copied(layout, tmp_path, given, words):
    run = run_on(layout, tmp_path, **given)
    with pytest.raises(verify.VerifyError, match=words) as refused:
        run.check_host()
    assert refused.value.code == 'VERIFY_HOST_UNSUITABLE'
    assert not os.path.exists(str(tmp_path / 'scratch'))


def test_binaries_of_another_major_version_are_refused(layout, tmp_path):
    bindir = tmp_path / 'bin'
    bindir.mkdir()
    for name in ('pg_ctl', 'pg_controldata', 'pg_checksums', 'pg_amcheck', 'pg_isready', 'psql'):
        (bindir / name).write_text('#!/bin/sh\necho "$(basename "$0") (PostgreSQL) 18.1"\n')
        (bindir / name).chmod(0o755)
    run = run_on(layout, tmp_path, directory='/tmp/v', pg_bindir=str(bindir))
    with pytest.raises(
        verify.VerifyError, match=r'has PostgreSQL pg_ctl \(PostgreSQL\) 18.1 in .*PostgreSQL 15 binaries'
    ):
        run.check_host()


def test_the_binaries_default_to_the_debian_layout_of_the_backups_major_version(layout, tmp_path):
    assert run_on(layout, tmp_path).bindir == '/usr/lib/postgresql/15/bin'


@pytest.mark.parametrize(
    'path, expected',
    [
        ('base/5/16384', (0, 5, 16384)),
        ('base/16401/16384.2', (0, 16401, 16384)),
        ('base/5/16384_fsm', (0, 5, 16384)),
        ('pg_tblspc/16400/PG_15_202209061/5/16500', (16400, 5, 16500)),
        ('global/1262', None),
        ('base/5/pg_filenode.map', None),
        ('base/5', None),
    ],
)
def test_a_data_file_names_its_tablespace_database_and_filenode(path, expected):
    assert verify.filenode_of(path) == expected


def test_a_failed_outcome_fails_with_its_first_failure_and_the_whole_outcome():
    outcome = dict(
        server='pg1',
        backup_id=FIRST,
        result='FAILED',
        failures=[dict(step='queries', message='rows returned 999, expected 1000'), dict(step='amcheck', message='x')],
    )
    error = verify.failed_verification(outcome)
    assert error.code == 'VERIFICATION_FAILED'
    kwargs = error.fail_json_kwargs()
    assert 'FAILED its verification at step queries: rows returned 999, expected 1000 (2 failures' in kwargs['msg']
    assert kwargs['failures'] == outcome['failures'] and kwargs['result'] == 'FAILED'


def test_only_what_a_dead_run_left_is_removed(layout, tmp_path):
    run = run_on(layout, tmp_path)
    scratch = tmp_path / 'scratch'
    dead, kept, cut, unclear = ('20261120T010000-2026113%dT010000' % n for n in range(4))
    for name, pid_port in [(dead, '65001'), (kept, '65001'), (cut, None), (unclear, 'x'), ('not-ours', '65001')]:
        (scratch / name / 'data').mkdir(parents=True)
        if pid_port:
            # No server answers on the socket of this pid file's port (line 4): nothing is signalled.
            (scratch / name / 'data' / 'postmaster.pid').write_text('999999\n%s\n0\n%s\n' % (scratch / name, pid_port))
    (scratch / kept / 'KEPT').write_text('')
    # A copy that stopped, and one cut during the copy (no server ever started there), go.
    assert run.stop_leftovers() == sorted([str(scratch / dead), str(scratch / cut)])
    # Kept for a human, not knowable (a pid file without a port), not named as a run names it: left alone.
    assert sorted(os.listdir(str(scratch))) == sorted([kept, unclear, 'not-ours'])
    assert run_on(layout, tmp_path, directory=str(tmp_path / 'none')).stop_leftovers() == []
