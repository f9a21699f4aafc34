"""Object storage (#19): backup1 copies its catalog of pg1 into an S3 bucket (the lab's endpoint: moto in server mode
on 127.0.0.24, IAM on) in barman-cloud's layout. Barman's cloud tools recover what we wrote and we recover what they
wrote; a recovery from the bucket alone once backup1's site and catalog are gone; an upload cut by a frozen endpoint
never listed and finished by the next run; refusals before anything is written; no secret in any output.
(tests/integration/with-bucket.yml)"""

import json
import os
import re
import shutil
import subprocess
import time

import boto3
import pytest
from drills import DRILLS, clear, query, stop_cluster
from labhosts import BARMAN_HOME, LAB, ROOT, VENV_BIN, as_postgres, module, psql, run, switch_wal

from ansible_collections.barman.postgresql.plugins.module_utils import catalog, infofile, wal_store

INVENTORY = os.path.join(ROOT, 'tests', 'integration', 'with-bucket.yml')
S3_URL, BUCKET, PREFIX = 'http://127.0.0.24:9000', 'barman-lab', 'lab/catalogs'
KEYS_DIR = '/var/lib/barman-lab/s3'
BARMAN_CLOUD = '/opt/barman-venv/bin/'
LAYOUT = catalog.ServerLayout(BARMAN_HOME, 'pg1')
LOST = '/var/lib/barman-lost.pg1'  # where the site-loss drill moves backup1's catalog of pg1 (lab down removes it)
ROWS = 500
SUM_SQL = 'SELECT count(*), coalesce(sum(id), 0) FROM clouded'
OUTPUTS = []  # every playbook's output of this module, searched for secrets at the end


def keys():
    with open(os.path.join(KEYS_DIR, 'access_key_id')) as key, open(os.path.join(KEYS_DIR, 'secret_access_key')) as sk:
        return key.read().strip(), sk.read().strip()


def s3():
    access, secret = keys()
    return boto3.client(
        's3', endpoint_url=S3_URL, region_name='us-east-1', aws_access_key_id=access, aws_secret_access_key=secret
    )


def objects(prefix):
    found, token = [], None
    while True:
        page = s3().list_objects_v2(Bucket=BUCKET, Prefix=prefix, **({'ContinuationToken': token} if token else {}))
        found += [o['Key'] for o in page.get('Contents', [])]
        if not page.get('IsTruncated'):
            return found
        token = page['NextContinuationToken']


def wipe(prefix):
    client = s3()
    for key in objects(prefix):
        client.delete_object(Bucket=BUCKET, Key=key)
    for upload in client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get('Uploads', []):
        client.abort_multipart_upload(Bucket=BUCKET, Key=upload['Key'], UploadId=upload['UploadId'])


def bucket_backups():
    base = '%s/pg1/base/' % PREFIX
    return sorted(k[len(base) :].split('/')[0] for k in objects(base) if k.endswith('/backup.info'))


def playbook(name, *args, check=True):
    proc = run(['ansible-playbook', '-i', INVENTORY, os.path.join('playbooks', name)] + list(args), check=check)
    OUTPUTS.append(proc.stdout + proc.stderr)
    return proc


def catalog_ids():
    return list(infofile.backup_infos(LAYOUT))


def on_backup1(params):
    """pg_backup_cloud on backup1 as barman, with the lab's endpoint and keys unless params say otherwise."""
    access, secret = keys()
    given = dict(
        server='pg1',
        barman_home=BARMAN_HOME,
        bucket=BUCKET,
        prefix=PREFIX,
        endpoint_url=S3_URL,
        addressing_style='path',
        access_key_id=access,
        secret_access_key=secret,
        timeout=5,
    )
    given.update(params)
    return module('pg_backup_cloud', given, '-i', INVENTORY)


def cloud_tool(tool, *args, user='postgres'):
    """One of Barman's cloud tools with the lab's keys (in the environment, as its documentation says)."""
    access, secret = keys()
    env = dict(os.environ, AWS_ACCESS_KEY_ID=access, AWS_SECRET_ACCESS_KEY=secret, AWS_DEFAULT_REGION='us-east-1')
    argv = ['runuser', '-u', user, '--', BARMAN_CLOUD + tool, '--endpoint-url', S3_URL, '--addressing-style', 'path']
    return run(argv + list(args), env=env)


def commit_batch(first, last):
    psql('pg1', 'INSERT INTO clouded (id) SELECT g FROM generate_series(%d, %d) g' % (first, last))


def between_commits(first, last):
    """Commit rows up to ``first - 1`` (done), note a time, commit ``first..last``: the time and the sums at it."""
    expected = psql('pg1', SUM_SQL).split('|')
    time.sleep(1)
    target = psql('pg1', 'SELECT clock_timestamp()')
    time.sleep(1)
    commit_batch(first, last)
    return target, expected


def switch_and_archive():
    """Switch pg1's WAL and wait until backup1's catalog holds the segment (archiving is asynchronous)."""
    switched = switch_wal('pg1')
    deadline = time.monotonic() + 60
    while switched not in wal_store.WalArchive(BARMAN_HOME, 'pg1').archived_names():
        assert time.monotonic() < deadline, '%s never reached backup1' % switched
        time.sleep(0.2)


def wait_promoted(port):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        answer = as_postgres(
            'psql',
            '-XAtq',
            '-h',
            '/var/run/postgresql',
            '-p',
            str(port),
            '-d',
            'postgres',
            '-c',
            'SELECT pg_is_in_recovery()',
            check=False,
        )
        if answer.returncode == 0 and answer.stdout.strip() == 'f':
            return
        time.sleep(0.3)
    raise AssertionError('the copy on port %d never left recovery' % port)


@pytest.fixture(scope='module')
def bucket(configured):
    """pg1 backed up with the bucket copy on: its table, the backup, a target between two later commits, and the
    WAL up to after it in the bucket."""
    wipe('lab/')
    psql('pg1', 'DROP TABLE IF EXISTS clouded; CREATE TABLE clouded (id int PRIMARY KEY)')
    commit_batch(1, ROWS)
    playbook('backup.yml', '-e', 'barman_retention_policy=')
    target, expected = between_commits(ROWS + 1, ROWS + 50)
    commit_batch(ROWS + 51, ROWS + 60)
    switch_and_archive()
    playbook('cloud.yml')
    yield dict(target=target, expected=expected)
    wipe('lab/')


def test_the_bucket_holds_the_backup_and_its_wal_and_barman_cloud_recovers_it(bucket):
    newest = catalog_ids()[-1]
    assert newest in bucket_backups(), (catalog_ids(), bucket_backups())
    listed = cloud_tool('barman-cloud-backup-list', 's3://%s/%s' % (BUCKET, PREFIX), 'pg1').stdout
    assert newest in listed, listed
    checked = on_backup1(dict(action='check', lag_warning=300))[1]
    assert checked['lag']['behind_segments'] == 0 and checked['status'] == 'ok', checked
    status = playbook('status.yml', '-e', 'status_report=', check=False).stdout
    assert 'BARMAN BUCKET OK - pg1' in status, status[-3000:]

    # barman-cloud-restore, then PostgreSQL fetching WAL with barman-cloud-wal-restore: a copy made by Barman alone.
    data = os.path.join(DRILLS, 'barman-cloud')
    clear(data)
    shutil.rmtree(data + '.tblspc', ignore_errors=True)
    os.makedirs(DRILLS, exist_ok=True)
    shutil.chown(DRILLS, 'postgres', 'postgres')
    cloud_tool(
        'barman-cloud-restore',
        '--tablespace',
        'lab_tbs:%s.tblspc' % data,
        's3://%s/%s' % (BUCKET, PREFIX),
        'pg1',
        newest,
        data,
    )
    access, secret = keys()
    credentials = data + '.aws'
    with open(os.open(credentials, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 'w') as handle:
        handle.write('[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' % (access, secret))
    shutil.chown(credentials, 'postgres', 'postgres')
    restore = (
        'env AWS_SHARED_CREDENTIALS_FILE=%s AWS_DEFAULT_REGION=us-east-1 %sbarman-cloud-wal-restore --endpoint-url %s '
        '--addressing-style path s3://%s/%s pg1 %%f %%p' % (credentials, BARMAN_CLOUD, S3_URL, BUCKET, PREFIX)
    )
    with open(os.path.join(data, 'postgresql.auto.conf'), 'a') as conf:
        conf.write(
            "restore_command = '%s'\nrecovery_target_time = '%s'\nrecovery_target_action = promote\n"
            "archive_mode = off\nport = 6451\nlisten_addresses = ''\n" % (restore, bucket['target'])
        )
    open(os.path.join(data, 'recovery.signal'), 'w').close()
    run(['chown', '-R', 'postgres:postgres', data])
    os.chmod(data, 0o700)  # barman-cloud-restore makes it with the umask's mode; PostgreSQL wants 0700
    try:
        as_postgres('/usr/lib/postgresql/15/bin/pg_ctl', '-D', data, '-l', data + '.log', '-w', '-t', '120', 'start')
        wait_promoted(6451)
        assert query(6451, SUM_SQL)[0].split('|') == bucket['expected']
    finally:
        stop_cluster(data)
        clear(data)
        shutil.rmtree(data + '.tblspc', ignore_errors=True)
        os.unlink(credentials)


def test_a_backup_barman_cloud_wrote_is_listed_and_recovered_by_ours(bucket):
    before = set(bucket_backups())
    cloud_tool(
        'barman-cloud-backup',
        '-h',
        '/var/run/postgresql',
        '-p',
        '5441',
        '-d',
        'postgres',
        '--immediate-checkpoint',
        '-z',
        's3://%s/%s' % (BUCKET, PREFIX),
        'pg1',
    )
    (theirs,) = set(bucket_backups()) - before
    target, expected = between_commits(ROWS + 1000, ROWS + 1010)
    switch_and_archive()
    playbook('cloud.yml')  # the WAL after Barman's backup, from the catalog
    assert theirs in on_backup1(dict(action='check'))[1]['backups']
    rows, summary = recover_from_bucket('from-barman-cloud', backup_id=theirs, target_time=target)
    assert rows == expected, summary
    assert theirs in summary


def recover_from_bucket(drill, **extra):
    data = os.path.join(DRILLS, drill)
    clear(data)
    variables = dict(server='pg1', recover_dir=data, recover_port=6452, **{'from': 'bucket'})
    variables.update(extra)
    proc = playbook('recover.yml', '-e', json.dumps(variables), check=False)
    if proc.returncode != 0:
        log = data + '.log'
        tail = open(log).read()[-3000:] if os.path.exists(log) else 'no log'
        return None, proc.stdout[-3000:] + "\n--- the copy's log\n" + tail
    summary = [line for line in proc.stdout.splitlines() if 'recovered from backup' in line][0]
    try:
        return query(6452, SUM_SQL)[0].split('|'), summary
    finally:
        stop_cluster(data)
        clear(data)


def test_with_the_site_and_its_catalog_lost_pitr_from_the_bucket_alone(bucket):
    run([LAB, 'site-down', 'backup1'])
    shutil.rmtree(LOST, ignore_errors=True)
    shutil.move(LAYOUT.root, LOST)
    try:
        # Refused before any copy: a target before every backup in the bucket.
        early = recover_from_bucket('too-early', target_time='2001-01-01 00:00:00+00')
        assert early[0] is None and 'TARGET_BEFORE_BACKUP' in early[1], early[1]
        assert not os.path.exists(os.path.join(DRILLS, 'too-early'))
        rows, summary = recover_from_bucket('from-bucket', target_time=bucket['target'])
        assert rows == bucket['expected'], summary
        assert not os.path.exists('/var/lib/postgresql/barman-cloud-stage-pg1'), 'the staged catalog stayed'
    finally:
        shutil.move(LOST, LAYOUT.root)
        run([LAB, 'site-up', 'backup1'])


def test_an_upload_cut_by_the_endpoint_is_never_listed_and_the_next_run_finishes_it(bucket):
    # Enough data for several parts, backed up without the bucket; then the copy, frozen in the middle.
    psql('pg1', "CREATE TABLE filler AS SELECT g, repeat('x', 900) AS pad FROM generate_series(1, 160000) g")
    try:
        playbook('backup.yml', '-e', json.dumps(dict(barman_cloud_bucket='', barman_retention_policy='')))
        backup_id = catalog_ids()[-1]
        with open(LAYOUT.backup_info_path(backup_id)) as handle:
            info_before = handle.read()
        key = '%s/pg1/base/%s/data.tar' % (PREFIX, backup_id)
        copying = subprocess.Popen(
            ['ansible-playbook', '-i', INVENTORY, os.path.join('playbooks', 'cloud.yml')],
            cwd=ROOT,
            env=dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ['PATH'], ANSIBLE_CONFIG=ROOT + '/ansible.cfg'),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        client, deadline = s3(), time.monotonic() + 300
        while True:
            uploads = client.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get('Uploads', [])
            if uploads and client.list_parts(Bucket=BUCKET, Key=key, UploadId=uploads[0]['UploadId']).get('Parts'):
                break
            assert copying.poll() is None and time.monotonic() < deadline, 'the upload never started'
            time.sleep(0.02)
        run([LAB, 's3-freeze'])
        try:
            output = copying.communicate(timeout=600)[0]
        finally:
            run([LAB, 's3-thaw'])
        OUTPUTS.append(output)
        assert copying.returncode != 0, output[-3000:]
        assert 'CLOUD_UNREACHABLE' in output, output[-3000:]
        assert backup_id not in bucket_backups()
        listed = cloud_tool('barman-cloud-backup-list', 's3://%s/%s' % (BUCKET, PREFIX), 'pg1').stdout
        assert backup_id not in listed, listed
        with open(LAYOUT.backup_info_path(backup_id)) as handle:
            assert handle.read() == info_before, 'the catalog changed'

        resumed = playbook('cloud.yml').stdout
        assert backup_id in bucket_backups()
        sent = re.search(r'%s \([^,]+, (\d+) of (\d+) part\(s\) sent' % backup_id, resumed)
        assert sent and int(sent.group(1)) < int(sent.group(2)), resumed[-3000:]  # resumed, not sent again
    finally:
        psql('pg1', 'DROP TABLE IF EXISTS filler')


def test_the_buckets_retention_keeps_what_it_must(bucket):
    keep_all = json.dumps(dict(barman_retention_policy='', barman_cloud_retention_policy=''))
    playbook('backup.yml', '-e', keep_all)
    playbook('backup.yml', '-e', keep_all)
    there = bucket_backups()
    assert len(there) >= 3, there
    kept = there[0]
    ok, result = module(
        'pg_backup_catalog', dict(action='keep', server='pg1', barman_home=BARMAN_HOME, backup_id=kept, target='full')
    )
    if not ok:  # the oldest in the bucket may be Barman's own (not in the catalog): keep the oldest of ours
        kept = [b for b in there if b in catalog_ids()][0]
        ok, result = module(
            'pg_backup_catalog',
            dict(action='keep', server='pg1', barman_home=BARMAN_HOME, backup_id=kept, target='full'),
        )
    assert ok, result
    try:
        playbook('cloud.yml', '-e', json.dumps(dict(barman_cloud_retention_policy='REDUNDANCY 1')))
        left = bucket_backups()
        assert left == sorted({kept, there[-1]}), (there, left)
        assert set(catalog_ids()) >= set(there) & set(catalog_ids()), 'the catalog lost a backup'
        # The WAL the kept backup needs is still there.
        info = infofile.read_backup_info(LAYOUT.backup_info_path(kept))
        wals = objects('%s/pg1/wals/' % PREFIX)
        assert any(info['begin_wal'] in k for k in wals), info['begin_wal']
    finally:
        module('pg_backup_catalog', dict(action='release', server='pg1', barman_home=BARMAN_HOME, backup_id=kept))


def test_refusals_before_anything_is_written(bucket):
    before = objects('lab/')
    ok, result = on_backup1(dict(secret_access_key='not-the-secret'))
    assert not ok and result['error_code'] == 'CLOUD_ACCESS_DENIED', result
    assert 'barman_cloud_secret_access_key' in result['msg'] and 'not-the-secret' not in json.dumps(result)
    ok, result = on_backup1(dict(bucket='no-such-bucket'))
    assert not ok and result['error_code'] == 'CLOUD_NO_BUCKET' and 'no-such-bucket' in result['msg'], result

    # Another cluster's backup under the same prefix and server name.
    newest = catalog_ids()[-1]
    with open(LAYOUT.backup_info_path(newest)) as handle:
        text = handle.read()
    foreign = '\n'.join('systemid=1234567890' if line.startswith('systemid=') else line for line in text.split('\n'))
    other = 'lab/other/pg1/base/20200101T000000/backup.info'
    s3().put_object(Bucket=BUCKET, Key=other, Body=foreign.encode())
    ok, result = on_backup1(dict(prefix='lab/other'))
    assert not ok and result['error_code'] == 'IDENTITY_MISMATCH', result
    assert '1234567890' in result['msg'] and 'barman_cloud_prefix' in result['msg']
    assert objects('lab/') == sorted(before + [other]), 'something was written'
    s3().delete_object(Bucket=BUCKET, Key=other)


def test_no_secret_in_any_output(bucket):
    verbose = playbook('cloud.yml', '-vvv').stdout
    access, secret = keys()
    for output in OUTPUTS + [verbose]:
        assert access not in output and secret not in output
    assert 'VALUE_SPECIFIED_IN_NO_LOG_PARAMETER' in verbose, 'the keys were not masked in the invocation'
    assert not os.path.exists(os.path.join(BARMAN_HOME, '.aws')), 'credentials written on the backup server'
