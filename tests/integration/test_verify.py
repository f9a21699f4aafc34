"""verify.yml on the lab: a healthy backup PASSES and shows in status; a flipped byte is named by file (and by
relation without the manifest), a missing WAL before any copy, a wrong query with both values; the original
server and the backup are never changed; two servers are verified at once; Barman still reads the catalog."""

import glob
import hashlib
import json
import os
import shutil
import subprocess

import pytest
from labhosts import BACKUP1, BARMAN_HOME, CLUSTERS, ROOT, barman, catalog, module, playbook, psql, run, switch_wal

ROWS = 1000
VERIFY_HOME = '/var/lib/barman-verify/copies'
QUERY = 'SELECT count(*) FROM verify_static'


def backup_of(server):
    """A fresh DONE backup of ``server`` holding the static table; its id."""
    psql(
        server,
        'DROP TABLE IF EXISTS verify_static; '
        'CREATE TABLE verify_static AS SELECT g AS n, md5(g::text) AS t FROM generate_series(1, %d) g; '
        'CREATE INDEX ON verify_static (n)' % ROWS,
    )
    # Frozen and checkpointed: no hint bit is set during the backup, so no full-page image in its WAL would
    # replay over a page that a test damages in the backup.
    psql(server, 'VACUUM (FREEZE) verify_static')
    psql(server, 'CHECKPOINT')
    switch_wal(server)
    playbook('backup.yml', '--limit', server, '-e', 'barman_retention_policy=')
    listed = catalog(dict(server=server))['servers'][0]['backups']
    return [b['backup_id'] for b in listed if b['status'] == 'DONE'][-1]


@pytest.fixture(scope='module')
def backups(configured, verifications_forgotten):
    return dict((server, backup_of(server)) for server in ('pg1', 'pg2'))


def tree_digest(path):
    """sha256 over every file's relative path, mode and content under ``path``."""
    digest = hashlib.sha256()
    for directory, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(directory, name)
            if os.path.islink(full):
                digest.update(('%s -> %s' % (os.path.relpath(full, path), os.readlink(full))).encode())
                continue
            digest.update(('%s %o' % (os.path.relpath(full, path), os.stat(full).st_mode)).encode())
            with open(full, 'rb') as handle:
                digest.update(hashlib.sha256(handle.read()).digest())
    return digest.hexdigest()


def original_state(server):
    """What a verification must never change on the original: its process, port, directory, data, archive."""
    row = psql(
        server,
        "SELECT pg_postmaster_start_time(), inet_server_port(), current_setting('data_directory'), "
        "(SELECT md5(string_agg(t, '' ORDER BY n)) FROM verify_static), "
        '(SELECT last_failed_wal FROM pg_stat_archiver)',
    )
    wals = {}
    for path in glob.glob(os.path.join(BARMAN_HOME, server, 'wals', '*', '*')):
        wals[os.path.basename(path)] = os.stat(path).st_size
    return row, wals


def assert_original_untouched(server, before):
    row, wals = original_state(server)
    assert row == before[0]
    # Every WAL archived before is still there, unchanged (new ones may arrive meanwhile).
    assert dict((n, s) for n, s in wals.items() if n in before[1]) == before[1]


def verify_module(server, backup_id, **options):
    params = dict(
        server=server,
        backup_id=backup_id,
        host=BACKUP1,
        directory='%s/%s' % (VERIFY_HOME, server),
        port=CLUSTERS[server]['port'] + 2000,
        original_port=CLUSTERS[server]['port'],
    )
    params.update(options)
    return module('pg_backup_verify', params)


def scratch_dirs(server):
    return sorted(glob.glob('%s/%s/*' % (VERIFY_HOME, server)))


def record(server, backup_id):
    with open(os.path.join(BARMAN_HOME, server, 'meta', '%s-verification.json' % backup_id)) as handle:
        return json.load(handle)


def verification_health(server):
    checks = catalog(dict(server=server, action='check'))['servers'][0]['checks']
    return [c for c in checks if c['name'] == 'verification'][0]


def test_a_healthy_backup_passes_is_recorded_and_shown_in_status(backups, tmp_path):
    backup_id = backups['pg1']
    before = original_state('pg1'), tree_digest(os.path.join(BARMAN_HOME, 'pg1', 'base', backup_id))
    queries = json.dumps(dict(barman_verify_queries=[dict(sql=QUERY, expect=ROWS, name='rows')]))
    playbook('verify.yml', '-e', 'servers=pg1', '-e', 'backup_id=' + backup_id, '-e', queries)

    outcome = record('pg1', backup_id)
    assert outcome['result'] == 'PASSED' and outcome['failures'] == []
    assert [(s['name'], s['result']) for s in outcome['steps']] == [
        ('files', 'PASSED'),
        ('wal', 'PASSED'),
        ('restore', 'PASSED'),
        ('checksums', 'PASSED'),
        ('amcheck', 'PASSED'),
        ('queries', 'PASSED'),
    ]
    assert 'pg_verifybackup' in outcome['steps'][0]['detail']
    assert scratch_dirs('pg1') == [], 'the copy is removed after a pass'
    assert_original_untouched('pg1', before[0])
    assert tree_digest(os.path.join(BARMAN_HOME, 'pg1', 'base', backup_id)) == before[1]

    report = tmp_path / 'status.html'
    shown = playbook('status.yml', '--limit', 'pg1', '-e', 'status_report=%s' % report).stdout
    assert 'last verified %s' % outcome['verified_at'].replace('T', ' ').replace('Z', ' UTC') in shown, shown
    html = report.read_text()
    assert backup_id in html and 'PASSED' in html and 'Last verified' in html
    assert verification_health('pg1')['status'] == 'ok'
    # Nothing left to verify: the next run says so and passes.
    again = playbook('verify.yml', '-e', 'servers=pg1').stdout
    assert 'SKIPPED every DONE backup passed' in again or 'pg1: PASSED' in again, again


def flip_byte(path, offset):
    with open(path, 'r+b') as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_a_flipped_byte_is_named_by_file_and_without_the_manifest_by_relation(backups):
    backup_id = backups['pg2']
    base = os.path.join(BARMAN_HOME, 'pg2', 'base', backup_id)
    relation_file = psql('pg2', "SELECT pg_relation_filepath('verify_static')")
    damaged = os.path.join(base, 'data', relation_file)
    before = original_state('pg2')
    # The table's file in the backup: hard links may share it with an older backup, so it is put back after.
    flip_byte(damaged, 8000)
    try:
        digest = tree_digest(base)
        succeeded, result = verify_module('pg2', backup_id)
        assert not succeeded and result['error_code'] == 'VERIFICATION_FAILED'
        assert result['result'] == 'FAILED'
        assert [s['name'] for s in result['steps']] == ['files', 'wal'], 'failed before any copy'
        assert result['failures'][0]['file'] == relation_file, result['failures']
        assert relation_file in result['msg']
        assert scratch_dirs('pg2') == []
        health = verification_health('pg2')
        assert health['status'] == 'critical' and backup_id in health['message'], health

        # Without the manifest (a failure of its own: the backup wrote one), the copy is still made and checked:
        # its checksums name the relation.
        os.rename(os.path.join(base, 'data', 'backup_manifest'), os.path.join(base, 'manifest.aside'))
        succeeded, result = verify_module('pg2', backup_id, keep_failed=True)
        assert not succeeded and result['result'] == 'FAILED'
        steps = dict((s['name'], s['result']) for s in result['steps'])
        assert steps['files'] == 'FAILED' and steps['restore'] == 'PASSED' and steps['checksums'] == 'FAILED'
        assert result['failures'][0]['file'] == 'backup_manifest' and 'missing' in result['failures'][0]['message']
        named = [f for f in result['failures'] if f['step'] == 'checksums']
        assert named and named[0]['relation'] == 'postgres.public.verify_static', result['failures']
        assert named[0]['file'] == relation_file
        assert result['kept'] and os.path.isdir(os.path.join(result['kept'], 'data')), result
        assert os.path.exists(os.path.join(result['kept'], 'KEPT')), 'marked: a later run leaves it alone'
        assert not os.path.exists(os.path.join(result['kept'], 'data', 'postmaster.pid')), 'the kept copy is stopped'
        os.rename(os.path.join(base, 'manifest.aside'), os.path.join(base, 'data', 'backup_manifest'))
        assert tree_digest(base) == digest, 'verification changed the backup'
    finally:
        for kept in scratch_dirs('pg2'):  # the copy kept on purpose (and none else, asserted above)
            shutil.rmtree(kept)
        flip_byte(damaged, 8000)
        if os.path.exists(os.path.join(base, 'manifest.aside')):
            os.rename(os.path.join(base, 'manifest.aside'), os.path.join(base, 'data', 'backup_manifest'))
    assert_original_untouched('pg2', before)

    # Mended: a manifest written afresh by action=manifest, and the backup passes again.
    os.unlink(os.path.join(base, 'data', 'backup_manifest'))
    written = catalog(dict(server='pg2', action='manifest'))
    assert written['manifests_written'] == [backup_id] and written['changed']
    checked = run(
        ['runuser', '-u', 'barman', '--', '/usr/lib/postgresql/15/bin/pg_verifybackup', '-n', '--ignore=pg_tblspc']
        + [os.path.join(base, 'data')]
    )
    assert 'backup successfully verified' in checked.stdout
    succeeded, result = verify_module('pg2', backup_id)
    assert succeeded and result['result'] == 'PASSED', result
    assert verification_health('pg2')['status'] == 'ok'


def test_a_missing_wal_fails_before_any_copy_with_its_name(backups):
    backup_id = backups['pg1']
    info = catalog(dict(server='pg1', action='show', backup_id=backup_id))['backup']
    needed = info['begin_wal']
    path = os.path.join(BARMAN_HOME, 'pg1', 'wals', needed[:16], needed)
    os.rename(path, path + '.aside')
    try:
        succeeded, result = verify_module('pg1', backup_id)
    finally:
        os.rename(path + '.aside', path)
    assert not succeeded and result['result'] == 'FAILED'
    assert [s['name'] for s in result['steps']] == ['files', 'wal']
    assert result['failures'][0]['wal'] == needed and needed in result['msg'], result['failures']
    assert scratch_dirs('pg1') == []


def test_a_query_with_the_wrong_value_fails_with_the_query_and_both_values(backups):
    backup_id = backups['pg1']
    wrong = dict(sql=QUERY, expect=ROWS - 1)
    succeeded, result = verify_module('pg1', backup_id, queries=[wrong, dict(sql='SELECT 1', expect=1)])
    assert not succeeded and result['result'] == 'FAILED'
    (failure,) = result['failures']
    assert failure['step'] == 'queries' and failure['query'] == QUERY
    assert (failure['expected'], failure['got']) == (str(ROWS - 1), str(ROWS))
    assert QUERY in result['msg'] and str(ROWS - 1) in result['msg'] and str(ROWS) in result['msg']
    assert scratch_dirs('pg1') == [], 'removed: keep_failed was not asked'


def test_two_servers_are_verified_at_once_on_one_backup_server_and_barman_still_reads_the_catalog(backups, barman_conf):
    before = dict((server, original_state(server)) for server in backups)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'))
    env['PATH'] = os.path.join(ROOT, '.venv', 'bin') + os.pathsep + env['PATH']
    runs = [
        subprocess.Popen(
            ['ansible-playbook', 'playbooks/verify.yml', '-e', 'servers=' + server, '-e', 'backup_id=' + backup_id],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for server, backup_id in sorted(backups.items())
    ]
    outputs = [proc.communicate(timeout=900)[0] for proc in runs]
    for proc, output in zip(runs, outputs):
        assert proc.returncode == 0, output[-4000:]
    for server, backup_id in backups.items():
        assert record(server, backup_id)['result'] == 'PASSED'
        assert_original_untouched(server, before[server])

    # Barman 3.19 lists and shows the verified backup, with its manifest and verification record in place.
    backup_id = backups['pg1']
    assert os.path.exists(os.path.join(BARMAN_HOME, 'pg1', 'meta', '%s-verification.json' % backup_id))
    listing = barman(barman_conf, 'list-backups', 'pg1').stdout
    assert backup_id in listing, listing
    shown = barman(barman_conf, 'show-backup', 'pg1', backup_id).stdout
    assert 'DONE' in shown and backup_id in shown, shown


def test_on_another_host_replaying_the_whole_archive(backups):
    """barman_verify_host: the copy runs on pg2's host (as barman-verify, made there by setup.yml), through
    every WAL archived after the backup."""
    backup_id = backups['pg1']
    psql(
        'pg1', 'INSERT INTO verify_static SELECT g, md5(g::text) FROM generate_series(%d, %d) g' % (ROWS + 1, ROWS + 5)
    )
    switch_wal('pg1')
    before = dict((server, original_state(server)) for server in ('pg1', 'pg2'))
    after_the_backup = dict(sql=QUERY, expect=ROWS + 5, name='rows committed after the backup')
    succeeded, result = verify_module(
        'pg1',
        backup_id,
        host=CLUSTERS['pg2']['host'],
        directory='%s/on-pg2/pg1' % VERIFY_HOME,
        replay='all',
        queries=[after_the_backup],
    )
    assert succeeded and result['result'] == 'PASSED', result.get('msg', result)
    steps = dict((s['name'], s['detail']) for s in result['steps'])
    assert 'the end of the archive' in steps['restore'] and CLUSTERS['pg2']['host'] in steps['restore']
    assert record('pg1', backup_id)['host'] == CLUSTERS['pg2']['host']
    assert glob.glob('%s/on-pg2/pg1/*' % VERIFY_HOME) == [], 'the copy is removed on that host'
    for server, state in before.items():
        assert_original_untouched(server, state)


@pytest.mark.parametrize(
    'extra, words',
    [
        (['-e', 'servers=backup1'], 'servers names PostgreSQL servers of the inventory'),
        (['-e', 'servers=nosuch'], 'which selects no host'),
        (['-e', 'verify_replay=some'], 'verify_replay is immediate'),
        (['-e', 'backup_id=20261130T000000'], 'a backup_id names one server'),
    ],
)
def test_a_wrong_request_is_refused_before_anything_runs(extra, words):
    refused = playbook('verify.yml', *extra, check=False)
    assert refused.returncode != 0 and words in refused.stdout, refused.stdout[-3000:]
    assert 'Verify the backup on the verification host' not in refused.stdout
