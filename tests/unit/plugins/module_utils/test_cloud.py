# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests for module_utils/cloud.py: the tars (the same bytes at every run, what they leave out), the bucket's keys,
which WAL a copy or a recovery needs, and S3's errors said in our words."""

import io
import os
import tarfile

import botocore.exceptions
import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import cloud, xlogdb

MB16 = 16 * 1024 * 1024


def make_pgdata(root):
    os.makedirs(os.path.join(root, 'base', '1'))
    os.makedirs(os.path.join(root, 'pg_wal', 'archive_status'))
    os.makedirs(os.path.join(root, 'pg_tblspc'))
    for name, text in (
        ('PG_VERSION', '15\n'),
        ('base/1/1259', 'x' * 5000),
        ('backup_label', 'START WAL\n'),
        ('tablespace_map', '16384 /srv/tbs\n'),
        ('pg_wal/000000010000000000000003', 'w'),
    ):
        with open(os.path.join(root, name), 'w') as handle:
            handle.write(text)
    os.symlink('/srv/tbs', os.path.join(root, 'pg_tblspc', '16384'))


def tar_bytes(root, compression):
    out = io.BytesIO()
    cloud.write_tar(root, out, compression, cloud.DATA_EMPTY_DIRS, cloud.DATA_LEFT_OUT)
    return out.getvalue()


@pytest.mark.parametrize('compression', ['none', 'gzip'])
def test_a_tar_is_the_same_bytes_at_every_run(tmp_path, compression):
    make_pgdata(str(tmp_path))
    first = tar_bytes(str(tmp_path), compression)
    assert first == tar_bytes(str(tmp_path), compression)  # so an interrupted upload resumes part by part


def test_the_data_tar_leaves_out_wal_tablespace_links_and_tablespace_map(tmp_path):
    make_pgdata(str(tmp_path))
    with tarfile.open(fileobj=io.BytesIO(tar_bytes(str(tmp_path), 'gzip')), mode='r:gz') as tar:
        members = dict((m.name, m) for m in tar.getmembers())
    assert {'PG_VERSION', 'backup_label', 'base/1/1259'} <= set(members)
    assert members['pg_wal'].isdir() and members['pg_tblspc'].isdir() and members['pg_wal/archive_status'].isdir()
    assert not [n for n in members if n.startswith(('pg_wal/0', 'pg_tblspc/'))]
    assert 'tablespace_map' not in members  # it would send a restored copy's tablespaces back to the original's
    assert [n for n in members if n.startswith('base')] == ['base', 'base/1', 'base/1/1259']  # parents first


def bucket(prefix):
    return cloud.Bucket(
        dict(
            bucket='b',
            prefix=prefix,
            endpoint_url='http://127.0.0.1:1',
            region='us-east-1',
            access_key_id='a',
            secret_access_key='s',
        ),
        'pg1',
    )


@pytest.mark.parametrize('prefix, root', [('', 'pg1'), ('lab/catalogs', 'lab/catalogs/pg1'), ('/x/', 'x/pg1')])
def test_keys_follow_barman_clouds_layout(prefix, root):
    place = bucket(prefix)
    assert place.root == root and place.where == 's3://b/' + root
    assert place.key('base', '20261130T143020', 'data.tar') == root + '/base/20261130T143020/data.tar'
    assert (
        place.wal_key('000000010000000000000003', 'gzip') == root + '/wals/0000000100000000/000000010000000000000003.gz'
    )
    assert place.wal_key('00000002.history', None) == root + '/wals/00000002.history'
    assert place.wal_key('000000010000000000000003.00000028.backup', None).endswith(
        '/wals/0000000100000000/000000010000000000000003.00000028.backup'
    )


def info(begin, end):
    return dict(begin_wal=begin, end_wal=end, xlog_segment_size=MB16)


def names(*segnos, timeline=1):
    return ['%08X%08X%08X' % (timeline, 0, n) for n in segnos]


def test_a_recovery_stages_the_wal_from_the_backups_start():
    objects = dict((n, {}) for n in names(1, 2, 3, 4, 5) + ['00000002.history'])
    backup = info(names(3)[0], names(3)[0])
    assert cloud._wal_names_for(objects, backup, None, None) == names(3, 4, 5) + ['00000002.history']
    assert cloud._wal_names_for(objects, backup, 'target_immediate', None) == names(3) + ['00000002.history']
    assert cloud._wal_names_for(objects, backup, 'target_lsn', 4 * MB16 + 100) == names(3, 4) + ['00000002.history']


def test_a_copy_sends_what_the_bucket_lacks_from_its_oldest_backup_on():
    class Catalog:
        segment_size = MB16
        wals = [xlogdb.XlogEntry(n, 10, 1.0, 'gzip', None) for n in names(1, 2, 3, 4) + ['00000002.history']]

    sent = cloud._wals_to_send(Catalog, {names(3)[0]: {}}, {'b': info(names(2)[0], names(2)[0])})
    assert [e.name for e in sent] == names(2, 4) + ['00000002.history']  # 1 is older than every backup there
    assert [e.name for e in cloud._wals_to_send(Catalog, {}, {})] == [e.name for e in Catalog.wals]  # no backup yet


def client_error(code, status, operation='HeadBucket'):
    return botocore.exceptions.ClientError(
        {'Error': {'Code': code, 'Message': 'm'}, 'ResponseMetadata': {'HTTPStatusCode': status}}, operation
    )


@pytest.mark.parametrize(
    'code, status, what, expected',
    [
        ('403', 403, 'open the bucket', 'CLOUD_ACCESS_DENIED'),
        ('SignatureDoesNotMatch', 403, 'list x', 'CLOUD_ACCESS_DENIED'),
        ('InvalidAccessKeyId', 403, 'list x', 'CLOUD_ACCESS_DENIED'),
        ('404', 404, 'open the bucket', 'CLOUD_NO_BUCKET'),
        ('NoSuchBucket', 404, 'list x', 'CLOUD_NO_BUCKET'),
        ('InternalError', 500, 'write x', 'CLOUD_FAILED'),
    ],
)
def test_s3s_errors_are_said_in_our_words(code, status, what, expected):
    place = bucket('')

    def fail():
        raise client_error(code, status)

    with pytest.raises(cloud.CloudError) as raised:
        place.call(what, fail)
    assert raised.value.code == expected and 'b' in str(raised.value)


def test_an_endpoint_that_does_not_answer_is_unreachable():
    place = bucket('')

    def fail():
        raise botocore.exceptions.EndpointConnectionError(endpoint_url='http://127.0.0.1:1')

    with pytest.raises(cloud.CloudError) as raised:
        place.call('open the bucket', fail)
    assert raised.value.code == 'CLOUD_UNREACHABLE' and 'resumes' in str(raised.value)


def test_holes_in_the_buckets_wal_are_found_from_its_oldest_backup_on():
    held = names(1, 3, 4, 7) + names(7, 8, timeline=2) + ['00000002.history']
    oldest = {'b': info(names(3)[0], names(3)[0])}
    assert cloud.wal_gaps(held, oldest, MB16) == [(names(5)[0], names(6)[0])]  # 2 is before every backup there
    assert cloud.wal_gaps(names(3, 4, 5), oldest, MB16) == []
