# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An S3 bucket as one more copy of a backup server's catalogs (like a mirror, the copy is made from the
catalog, never from PostgreSQL), in the layout Barman's cloud tools write and read:

  <prefix>/<server>/base/<backup_id>/data.tar[.gz]   PGDATA with its backup_label (pg_wal empty, no pg_tblspc links)
  <prefix>/<server>/base/<backup_id>/<oid>.tar[.gz]  each tablespace
  <prefix>/<server>/base/<backup_id>/backup.info     the catalog's, written last: a backup is listed once complete
  <prefix>/<server>/wals/<timeline+log>/<name>[.gz]  segments and .backup files (history files in wals/)

A tar goes up as a multipart upload, which appears under its name only when complete. The tar stream is the same
bytes at every run, so an upload cut short is resumed: the parts already there with the same MD5 are not sent
again. When every backup server is gone, ``stage`` rebuilds a catalog from the bucket on the host to recover
(the backup a target needs, its chain and its WAL), which pg_recover then recovers like any other.
"""

import concurrent.futures
import gzip
import hashlib
import os
import shutil
import tarfile
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from ansible_collections.barman.postgresql.plugins.module_utils import (
    catalog,
    chain,
    health,
    identityfile,
    infofile,
    lockfile,
    recovery,
    retention,
    wal,
    wal_store,
    xlogdb,
)
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

# What barman-cloud-wal-archive appends to a compressed WAL file's name, by our catalog's compressions.
WAL_SUFFIXES = {'gzip': '.gz', 'bzip2': '.bz2', 'zstd': '.zst', 'lz4': '.lz4', 'xz': '.xz', 'snappy': '.snappy'}
TAR_SUFFIXES = {'none': '.tar', 'gzip': '.tar.gz'}
MIN_PART = 16 * 1024 * 1024  # S3: every part but the last at least 5 MiB, at most 10,000 parts
MAX_PARTS = 10000
STAGE_MARKER = 'staged-from-bucket.json'  # a catalog rebuilt from a bucket for one recovery (removed after it)
ARCHIVED_META = 'barman-archived'  # object metadata of a WAL file: when the catalog archived it (seconds since 1970)
# WAL compressions barman-cloud-wal-archive may write that a recovery here cannot read (wal_store.copy_decompressed)
UNREADABLE_WAL = ('xz', 'snappy')


class CloudError(BarmanError):
    """The bucket cannot be used, or a transfer failed."""

    code = 'CLOUD_FAILED'


def bucket_argument_spec() -> dict:
    """The options that say which bucket, where and how: every module that talks to a bucket takes them."""
    return dict(
        bucket=dict(type='str', required=True),
        prefix=dict(type='str', default=''),
        endpoint_url=dict(type='str'),
        region=dict(type='str', default='us-east-1'),
        addressing_style=dict(type='str', choices=['auto', 'path', 'virtual'], default='auto'),
        access_key_id=dict(type='str', no_log=True),
        secret_access_key=dict(type='str', no_log=True),
        session_token=dict(type='str', no_log=True),
        profile=dict(type='str'),
        encryption=dict(type='str', choices=['none', 'AES256', 'aws:kms'], default='none'),
        kms_key_id=dict(type='str'),
        storage_class=dict(type='str'),
        timeout=dict(type='int', default=60),
        parallel=dict(type='int', default=4),
    )


def _import_boto3():
    try:
        import boto3  # pylint: disable=import-outside-toplevel
        import botocore.config  # pylint: disable=import-outside-toplevel
        import botocore.exceptions  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise CloudError(
            'boto3 is not installed for this Python on %s' % os.uname()[1],
            'Install it (Debian: apt install python3-boto3; setup.yml does so on backup servers with a bucket)',
            code='MISSING_DEPENDENCY',
        ) from None
    return boto3, botocore


class Bucket:
    """One server's part of a bucket, with the errors of S3 turned into ours."""

    def __init__(self, params: Mapping[str, Any], server: str) -> None:
        boto3, botocore = _import_boto3()
        self._errors = botocore.exceptions
        self.name = params['bucket']
        self.server = catalog.validate_server_name(server)
        self.root = '/'.join(p for p in (params.get('prefix') or '').strip('/').split('/') + [server] if p)
        self.where = 's3://%s/%s' % (self.name, self.root)
        try:
            session = boto3.session.Session(
                aws_access_key_id=params.get('access_key_id') or None,
                aws_secret_access_key=params.get('secret_access_key') or None,
                aws_session_token=params.get('session_token') or None,
                profile_name=params.get('profile') or None,
            )
        except botocore.exceptions.ProfileNotFound:
            raise CloudError(
                'the AWS profile %s is not in the credentials of %s here' % (params.get('profile'), os.getuid()),
                'Create it in ~/.aws/credentials of the user the module runs as, or give keys instead',
                code='CLOUD_ACCESS_DENIED',
            ) from None
        import urllib3.exceptions  # pylint: disable=import-outside-toplevel

        # What reading an object's body may raise, past the request itself.
        self.transfer_errors = (botocore.exceptions.BotoCoreError, urllib3.exceptions.HTTPError)
        config = botocore.config.Config(
            s3={'addressing_style': params.get('addressing_style') or 'auto'},
            connect_timeout=params.get('timeout') or 60,
            read_timeout=params.get('timeout') or 60,
            retries={'max_attempts': 3, 'mode': 'standard'},
            max_pool_connections=max(10, (params.get('parallel') or 4) * 2),
        )
        self.client = session.client(
            's3', endpoint_url=params.get('endpoint_url') or None, region_name=params.get('region'), config=config
        )
        self.parallel = max(1, params.get('parallel') or 4)
        self.put_args = {}
        if params.get('encryption') not in (None, 'none'):
            self.put_args['ServerSideEncryption'] = params['encryption']
            if params['encryption'] == 'aws:kms' and params.get('kms_key_id'):
                self.put_args['SSEKMSKeyId'] = params['kms_key_id']
        if params.get('storage_class'):
            self.put_args['StorageClass'] = params['storage_class']

    # -- errors ---------------------------------------------------------------------------------

    def call(self, what: str, function: Callable[..., Any], **kwargs: Any) -> Any:
        """One S3 request, with its failures said in our words (what failed, why, what to do)."""
        try:
            return function(**kwargs)
        except self._errors.NoCredentialsError:
            raise CloudError(
                'no credentials for the bucket %s (%s)' % (self.name, what),
                'Set barman_cloud_access_key_id and barman_cloud_secret_access_key (or an AWS profile) for this host',
                code='CLOUD_ACCESS_DENIED',
            ) from None
        except self._errors.ClientError as error:
            raise self._client_error(what, error) from None
        except (
            self._errors.EndpointConnectionError,
            self._errors.ConnectTimeoutError,
            self._errors.ReadTimeoutError,
            self._errors.ConnectionClosedError,
        ) as error:
            raise CloudError(
                'the S3 endpoint of bucket %s did not answer (%s): %s' % (self.name, what, error),
                'Check barman_cloud_endpoint_url and the network to it; nothing partial is listed, the next run '
                'resumes',
                code='CLOUD_UNREACHABLE',
            ) from None
        except self._errors.BotoCoreError as error:
            raise CloudError('the request to bucket %s failed (%s): %s' % (self.name, what, error)) from None

    def _client_error(self, what, error):
        code = str(error.response.get('Error', {}).get('Code', ''))
        status = error.response.get('ResponseMetadata', {}).get('HTTPStatusCode')
        if code in ('NoSuchBucket',) or (status == 404 and what == 'open the bucket'):
            return CloudError(
                'the bucket %s does not exist at this endpoint' % self.name,
                'Create it (object storage buckets are made by their owner, not by barman.postgresql) or correct '
                'barman_cloud_bucket',
                code='CLOUD_NO_BUCKET',
            )
        if (
            code
            in (
                'InvalidAccessKeyId',
                'SignatureDoesNotMatch',
                'AccessDenied',
                'InvalidToken',
                'ExpiredToken',
                '403',
                'Forbidden',
            )
            or status == 403
        ):
            return CloudError(
                'the bucket %s refused these credentials (%s: %s)' % (self.name, what, code or status),
                'Check barman_cloud_access_key_id, barman_cloud_secret_access_key (and the session token) and that '
                'they may read, write, list and delete in %s' % self.where,
                code='CLOUD_ACCESS_DENIED',
            )
        return CloudError(
            'the bucket %s answered %s to "%s": %s' % (self.name, code or status, what, error),
            'Read the message of the object store; the next run resumes what this one began',
        )

    # -- keys -------------------------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        return '/'.join((self.root,) + parts)

    def wal_key(self, name: str, compression: Optional[str]) -> str:
        suffix = WAL_SUFFIXES.get(compression, '') if compression else ''
        if wal.parse_wal_name(name).kind == 'history':
            return self.key('wals', name + suffix)
        return self.key('wals', name[:16], name + suffix)

    def listing(self, prefix: str) -> List[Dict[str, Any]]:
        """Every object under ``prefix`` (a key prefix): dicts of Key, Size, LastModified, ETag."""
        objects = []
        token = None
        while True:
            kwargs = dict(Bucket=self.name, Prefix=prefix)
            if token:
                kwargs['ContinuationToken'] = token
            page = self.call('list %s' % prefix, self.client.list_objects_v2, **kwargs)
            objects += page.get('Contents', [])
            if not page.get('IsTruncated'):
                return objects
            token = page['NextContinuationToken']

    def read(self, key: str) -> bytes:
        return self.call('read %s' % key, self.client.get_object, Bucket=self.name, Key=key)['Body'].read()

    def put(self, key: str, data: bytes, metadata: Optional[Mapping[str, str]] = None) -> None:
        self.call(
            'write %s' % key,
            self.client.put_object,
            Bucket=self.name,
            Key=key,
            Body=data,
            ContentMD5=_content_md5(data),
            Metadata=dict(metadata or {}),
            **self.put_args,
        )

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for start in range(0, len(keys), 1000):
            batch = [dict(Key=k) for k in keys[start : start + 1000]]
            answer = self.call(
                'delete objects', self.client.delete_objects, Bucket=self.name, Delete=dict(Objects=batch, Quiet=True)
            )
            if answer.get('Errors'):
                raise CloudError(
                    'the bucket %s did not delete %s: %s'
                    % (self.name, answer['Errors'][0].get('Key'), answer['Errors'][0].get('Message')),
                    'Check that the credentials may delete objects there',
                )

    # -- what the bucket holds --------------------------------------------------------------------

    def open(self) -> None:
        """Check the bucket is there and these credentials may use it, before anything is written."""
        self.call('open the bucket', self.client.head_bucket, Bucket=self.name)
        self.listing(self.key('base') + '/')[:1]  # listing needs its own permission

    def backups(self) -> Dict[str, Dict[str, Any]]:
        """{backup_id: info} of the complete backups here (those with a backup.info), oldest first."""
        infos = {}
        for entry in self.listing(self.key('base') + '/'):
            parts = entry['Key'][len(self.key('base')) + 1 :].split('/')
            if len(parts) == 2 and parts[1] == 'backup.info':
                text = self.read(entry['Key']).decode('utf-8')
                infos[parts[0]] = infofile.parse_backup_info(text, source='s3://%s/%s' % (self.name, entry['Key']))
        return dict((b, infos[b]) for b in infofile.ordered_backup_ids(infos))

    def backup_objects(self, backup_id: str) -> List[Dict[str, Any]]:
        return self.listing(self.key('base', backup_id) + '/')

    def wals(self) -> Dict[str, Dict[str, Any]]:
        """{WAL name: its object (Key, Size, LastModified, ETag, compression)} of the WAL archived here."""
        found = {}
        for entry in self.listing(self.key('wals') + '/'):
            base = entry['Key'].rsplit('/', 1)[-1]
            compression = None
            for method, suffix in WAL_SUFFIXES.items():
                if base.endswith(suffix):
                    base, compression = base[: -len(suffix)], method
                    break
            if wal.is_wal_name(base):
                found[base] = dict(entry, compression=compression)
        return found

    def check_identity(self, systemid: Optional[str], infos: Mapping[str, Mapping[str, Any]]) -> None:
        """Refuse a bucket place that holds another cluster's backups under this server's name."""
        others = sorted(set(str(i.get('systemid')) for i in infos.values() if i.get('systemid')) - {str(systemid)})
        if systemid and others:
            raise CloudError(
                '%s holds backups of another PostgreSQL cluster (system identifier %s; %s is %s)'
                % (self.where, ', '.join(others), self.server, systemid),
                "Give this server its own barman_cloud_prefix (or bucket), or move the other cluster's objects "
                'away; nothing was written',
                code='IDENTITY_MISMATCH',
            )

    # -- multipart uploads of a stream ---------------------------------------------------------

    def upload_stream(self, key: str, produce: Callable[[Any], None], expected_size: int) -> Dict[str, int]:
        """Upload what ``produce(writer)`` writes as the object ``key``, in parts sent ``parallel`` at a time.
        An unfinished upload of the same key is resumed: a part already there with the same MD5 is not sent again.
        Returns dict(bytes, parts, parts_sent)."""
        part_size = max(MIN_PART, -(-int(expected_size * 1.2) // (MAX_PARTS - 100)))
        upload_id, done = self._open_upload(key)
        writer = _PartWriter(self, key, upload_id, part_size, done)
        try:
            produce(writer)
            writer.close()
        except BaseException:
            writer.abandon()  # the parts sent stay for the next run: the upload is not aborted
            raise
        self.call(
            'complete %s' % key,
            self.client.complete_multipart_upload,
            Bucket=self.name,
            Key=key,
            UploadId=upload_id,
            MultipartUpload=dict(Parts=[dict(PartNumber=n, ETag=e) for n, e in sorted(writer.etags.items())]),
        )
        return dict(bytes=writer.total, parts=len(writer.etags), parts_sent=writer.sent)

    def abort_stale_uploads(self, backup_ids: Iterable[str], age_seconds: float = 86400) -> List[str]:
        """Abort the unfinished uploads of this server's backups but ``backup_ids`` begun over ``age_seconds`` ago:
        their backup left the catalog before it was copied, nothing will finish them, and their parts cost storage.
        A younger one may be another writer's at work (barman-cloud-backup). The keys aborted."""
        keep = set(backup_ids)
        base = self.key('base')
        answer = self.call('list uploads', self.client.list_multipart_uploads, Bucket=self.name, Prefix=base)
        aborted = []
        for upload in answer.get('Uploads', []):
            parts = upload['Key'][len(base) + 1 :].split('/')
            if len(parts) != 2 or parts[0] in keep or time.time() - upload['Initiated'].timestamp() < age_seconds:
                continue
            self.call(
                'abort %s' % upload['Key'],
                self.client.abort_multipart_upload,
                Bucket=self.name,
                Key=upload['Key'],
                UploadId=upload['UploadId'],
            )
            aborted.append(upload['Key'])
        return aborted

    def _open_upload(self, key):
        answer = self.call('list uploads', self.client.list_multipart_uploads, Bucket=self.name, Prefix=key)
        for upload in sorted(answer.get('Uploads', []), key=lambda u: u['Initiated'], reverse=True):
            if upload['Key'] == key:
                parts = {}
                marker = 0
                while True:
                    page = self.call(
                        'list parts',
                        self.client.list_parts,
                        Bucket=self.name,
                        Key=key,
                        UploadId=upload['UploadId'],
                        PartNumberMarker=marker,
                    )
                    parts.update((p['PartNumber'], p['ETag'].strip('"')) for p in page.get('Parts', []))
                    if not page.get('IsTruncated'):
                        break
                    marker = page['NextPartNumberMarker']
                return upload['UploadId'], parts
        answer = self.call(
            'start %s' % key, self.client.create_multipart_upload, Bucket=self.name, Key=key, **self.put_args
        )
        return answer['UploadId'], {}


def _content_md5(data):
    import base64  # pylint: disable=import-outside-toplevel

    return base64.b64encode(hashlib.md5(data).digest()).decode('ascii')  # noqa: S324 - S3's integrity check


class _PartWriter:
    """A file object the tar stream is written to: each ``part_size`` bytes become a part, sent by a pool."""

    def __init__(self, bucket, key, upload_id, part_size, already):
        self.bucket, self.key, self.upload_id, self.part_size, self.already = bucket, key, upload_id, part_size, already
        self.buffer = bytearray()
        self.number = 0
        self.total = 0
        self.sent = 0
        self.etags = {}
        self.pool = concurrent.futures.ThreadPoolExecutor(bucket.parallel)
        self.slots = threading.Semaphore(bucket.parallel + 1)  # parts in memory at once
        self.counting = threading.Lock()
        self.futures = []

    def flush(self):
        pass

    def write(self, data):
        self.buffer += data
        self.total += len(data)
        while len(self.buffer) >= self.part_size:
            self._part(bytes(self.buffer[: self.part_size]))
            del self.buffer[: self.part_size]
        return len(data)

    def _part(self, data):
        self.number += 1
        self._raise_failures()
        etag = hashlib.md5(data).hexdigest()  # noqa: S324 - S3's ETag of a part
        if self.already.get(self.number) == etag:
            self.etags[self.number] = etag
            return
        self.slots.acquire()
        self.futures.append(self.pool.submit(self._send, self.number, data))

    def _send(self, number, data):
        try:
            answer = self.bucket.call(
                'send part %d of %s' % (number, self.key),
                self.bucket.client.upload_part,
                Bucket=self.bucket.name,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=data,
                ContentMD5=_content_md5(data),
            )
            with self.counting:
                self.etags[number] = answer['ETag'].strip('"')
                self.sent += 1
        finally:
            self.slots.release()

    def _raise_failures(self):
        for future in [f for f in self.futures if f.done()]:
            future.result()
            self.futures.remove(future)

    def close(self):
        """Send the last part (the only one, however small, of an empty stream) and wait for every part."""
        if self.buffer or self.number == 0:
            self._part(bytes(self.buffer))
            self.buffer = bytearray()
        for future in self.futures:
            future.result()
        self.pool.shutdown()

    def abandon(self):
        for future in self.futures:
            future.cancel()
        self.pool.shutdown(wait=True)


# -- a backup into tars ---------------------------------------------------------------------------

# Empty in the data tar: pg_wal (an old backup may hold a link to the original's WAL directory) and pg_tblspc
# (barman-cloud-restore makes the links where it is told). Left out: tablespace_map, which would send a restored
# copy's tablespaces back to the original's directories at its first start (the restore writes its own).
DATA_EMPTY_DIRS = ('pg_wal', 'pg_wal/archive_status', 'pg_tblspc')
DATA_LEFT_OUT = ('tablespace_map',)


def _raise(error):
    raise error  # an unreadable directory must fail the tar, never leave a hole in it


def _tar_members(root, left_out):
    """(path, name in the tar) of every entry under root but the top-level names ``left_out``, parents first, in
    a fixed order."""
    for directory, dirnames, filenames in os.walk(root, onerror=_raise):
        relative = os.path.relpath(directory, root)
        if relative == '.':
            dirnames[:] = [d for d in dirnames if d not in left_out]
            filenames = [f for f in filenames if f not in left_out]
        links = [d for d in dirnames if os.path.islink(os.path.join(directory, d))]
        dirnames[:] = sorted(d for d in dirnames if d not in links)
        if relative != '.':
            yield directory, relative
        for name in sorted(filenames + links):
            yield os.path.join(directory, name), os.path.normpath(os.path.join(relative, name))


def write_tar(
    root: str, out: Any, compression: str, empty_dirs: Iterable[str] = (), left_out: Iterable[str] = ()
) -> None:
    """The tar (gzip'd or not) of everything under root but the top-level names ``left_out``, with ``empty_dirs``
    as empty directories: entries in a fixed order and metadata from the files, the same bytes from the same files
    at every run (gzip without a time stamp)."""
    empty_dirs = tuple(empty_dirs)
    target = gzip.GzipFile(fileobj=out, mode='wb', mtime=0, compresslevel=6) if compression == 'gzip' else out
    with tarfile.open(fileobj=target, mode='w|', format=tarfile.GNU_FORMAT) as tar:
        for name in empty_dirs:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o700
            tar.addfile(info)
        for path, name in _tar_members(root, empty_dirs + tuple(left_out)):
            info = tar.gettarinfo(path, arcname=name)
            if info.isreg():
                with open(path, 'rb') as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    if target is not out:
        target.close()


def _directory_bytes(root):
    total = 0
    for directory, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                pass
    return total


# -- the copy of a catalog -----------------------------------------------------------------------


def _read_catalog(layout):
    # Imported here: server_catalog reads verification records, which recovery (imported above) does not need.
    from ansible_collections.barman.postgresql.plugins.module_utils import server_catalog  # pylint: disable=C0415

    return server_catalog.ServerCatalog(layout)


def _open_copy(params):
    """The catalog and the bucket's copy of a server, read once: (layout, bucket, catalog, the bucket's backups),
    after the checks that come before anything is written (the bucket usable, the same cluster in it)."""
    layout = catalog.ServerLayout(params['barman_home'], params['server'])
    bucket = Bucket(params, params['server'])
    bucket.open()
    local = _read_catalog(layout)
    there = bucket.backups()
    bucket.check_identity(_catalog_systemid(layout, local.infos), there)
    return layout, bucket, local, there


def _done(infos):
    return dict((b, i) for b, i in infos.items() if i.get('status') == 'DONE')


def _to_upload(local, done_there):
    """The catalog's DONE backups newer than the bucket's newest DONE one (all of them for an empty bucket): older
    ones are not copied, the bucket's retention would remove them again."""
    newest_there = max((infofile.backup_order_key(b, i) for b, i in done_there.items()), default=None)
    return [
        b
        for b in infofile.done_backup_ids(local.infos)
        if b not in done_there and (newest_there is None or infofile.backup_order_key(b, local.infos[b]) > newest_there)
    ]


def _catalog_systemid(layout, infos):
    identity = identityfile.read_identity(layout.identity_file)
    if identity:
        return str(identity['systemid'])
    found = [str(i['systemid']) for i in infos.values() if i.get('systemid')]
    return found[-1] if found else None


def upload_backup(
    bucket: Bucket, layout: catalog.ServerLayout, backup_id: str, info: Mapping[str, Any], compression: str
) -> Dict[str, Any]:
    """Every tar of a catalog's backup, then its backup.info: the backup is listed once all its data is there."""
    started = time.time()
    suffix = TAR_SUFFIXES[compression]
    trees = [('data' + suffix, layout.backup_data_dir(backup_id), DATA_EMPTY_DIRS, DATA_LEFT_OUT)]
    for tablespace in info.get('tablespaces') or []:
        trees.append(
            ('%d%s' % (tablespace.oid, suffix), layout.backup_tablespace_dir(backup_id, tablespace.oid), (), ())
        )
    sent = dict(bytes=0, parts=0, parts_sent=0)
    for name, root, empty, left_out in trees:
        stats = bucket.upload_stream(
            bucket.key('base', backup_id, name),
            lambda out, root=root, empty=empty, left_out=left_out: write_tar(root, out, compression, empty, left_out),
            _directory_bytes(root),
        )
        for counter in sent:
            sent[counter] += stats[counter]
    with open(layout.backup_info_path(backup_id), 'rb') as handle:
        bucket.put(bucket.key('base', backup_id, 'backup.info'), handle.read())
    return dict(sent, backup_id=backup_id, seconds=round(time.time() - started, 3))


def _wal_first_needed(infos, segment_size):
    """The oldest segment number a backup in ``infos`` starts from, or None without backups."""
    begins = [wal.segment_number(i['begin_wal'], segment_size) for i in infos.values() if i.get('begin_wal')]
    return min(begins) if begins else None


def _in_parallel(bucket, function, items):
    with concurrent.futures.ThreadPoolExecutor(bucket.parallel) as pool:
        return list(pool.map(function, items))


def sync(params: Mapping[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    """Copy into the bucket the catalog's WAL the bucket lacks (from the oldest backup there on), then every DONE
    backup newer than the bucket's newest DONE one (all of them into an empty bucket), then the WAL again; report the
    WAL lag. One run at a time per server (the lock ``cloud``): another run at work makes this one a no-op, said in
    the result (``busy``), not a failure."""
    layout, bucket, local, there = _open_copy(params)
    done_there = _done(there)
    missing = _to_upload(local, done_there)
    held = bucket.wals()  # listed once; what this run sends is added to it
    result = dict(
        changed=False,
        server=params['server'],
        bucket=bucket.where,
        missing=missing,
        uploaded=[],
        wals_uploaded=0,
        busy=False,
    )
    if check_mode:
        result['wals_uploaded'] = len(_wals_to_send(local, held, done_there))
        result['changed'] = bool(missing or result['wals_uploaded'])
        result['lag'] = lag(local, held, done_there)
        return result
    try:
        lock = lockfile.ServerLock(layout, 'cloud').acquire()
    except lockfile.LockBusy:
        result.update(busy=True, lag=lag(local, held, done_there))
        return result
    try:
        # WAL first: a long upload of a backup must not hold the WAL back.
        result['wals_uploaded'] = _upload_wals(bucket, layout, local, done_there, held)
        for backup_id in missing:
            result['uploaded'].append(
                upload_backup(bucket, layout, backup_id, local.infos[backup_id], params['compression'])
            )
            done_there[backup_id] = local.infos[backup_id]
            local = _read_catalog(layout)  # the WAL that arrived during the upload
            result['wals_uploaded'] += _upload_wals(bucket, layout, local, done_there, held)
        result['abandoned_uploads'] = bucket.abort_stale_uploads(missing)
    finally:
        lock.release()
    result['changed'] = bool(result['uploaded'] or result['wals_uploaded'])
    result['lag'] = lag(local, held, done_there)
    return result


def _wals_to_send(local, held_names, infos):
    segment_size = local.segment_size
    first = _wal_first_needed(infos, segment_size)
    wanted = []
    for entry in local.wals:
        if entry.name in held_names:
            continue
        if (
            wal.parse_wal_name(entry.name).kind != 'history'
            and first is not None
            and (wal.segment_number(entry.name[:24], segment_size) < first)
        ):
            continue  # older than every backup in the bucket: its retention would remove it again
        wanted.append(entry)
    return wanted


def _upload_wals(bucket, layout, local, infos, held):
    """Upload the catalog's WAL files the bucket lacks (not in ``held``, the bucket's WAL, which it updates), as the
    catalog stores them (compressed, a suffix saying how; the time it archived them as metadata); how many. A name
    already in the bucket is never written again."""

    def send(entry):
        with open(layout.wal_path(entry.name), 'rb') as handle:
            data = handle.read()  # read once: the compression is of these bytes, whatever replaces the file later
        bucket.put(
            bucket.wal_key(entry.name, wal_store.compression_of(data[:4])), data, {ARCHIVED_META: repr(entry.time)}
        )

    wanted = _wals_to_send(local, held, infos)
    _in_parallel(bucket, send, wanted)
    held.update((entry.name, {}) for entry in wanted)
    return len(wanted)


def lag(local: Any, held: Mapping[str, Any], infos: Mapping[str, Any]) -> Dict[str, Any]:
    """How far the bucket's WAL is behind the catalog's: segments, and seconds since the oldest missing one
    was archived on the backup server."""
    behind = _wals_to_send(local, held, infos)
    segments = [e for e in behind if wal.parse_wal_name(e.name).kind == 'segment']
    newest = max((n for n in held if wal.is_segment_name(n)), default=None)
    return dict(
        behind_segments=len(segments),
        behind_seconds=round(time.time() - segments[0].time, 1) if segments else 0,
        newest=newest,
        catalog_newest=max((e.name for e in local.wals if wal.is_segment_name(e.name)), default=None),
    )


def check(params: Mapping[str, Any]) -> Dict[str, Any]:
    """The bucket's copy of a server, read only: its backups, how far its WAL is behind the catalog's, and a health
    verdict on that lag (lag_warning, lag_critical seconds) in status.yml's words."""
    _layout, bucket, local, there = _open_copy(params)
    held, done_there = bucket.wals(), _done(there)
    behind = lag(local, held, done_there)
    missing = _to_upload(local, done_there)
    seconds = behind['behind_seconds']
    critical, warning = params.get('lag_critical'), params.get('lag_warning')
    status = (
        health.CRITICAL
        if critical and seconds >= critical
        else health.WARNING
        if warning and seconds >= warning
        else health.OK
    )
    message = 'WAL %d segment(s), %s behind the catalog; %d backup(s) there, %d not copied yet' % (
        behind['behind_segments'],
        health.age_text(seconds),
        len(there),
        len(missing),
    )
    gaps = wal_gaps(held, there, local.segment_size)
    if gaps:  # the catalog's retention removed WAL before it was copied: no recovery across it from the bucket
        status = health.CRITICAL
        message += '; WAL missing in the bucket: %s' % ', '.join('%s..%s' % g for g in gaps[:3])
    return dict(
        changed=False,
        server=params['server'],
        bucket=bucket.where,
        backups=list(there),
        missing=missing,
        lag=behind,
        gaps=gaps,
        status=status,
        nagios='BARMAN BUCKET %s - %s: %s' % (status.upper(), params['server'], message),
    )


def wal_gaps(held: Iterable[str], infos: Mapping[str, Mapping[str, Any]], segment_size: int) -> List[Tuple[str, str]]:
    """The runs of segments missing from the bucket's WAL, timeline by timeline, from the oldest backup's first
    segment there to each timeline's newest: (first missing, last missing) names."""
    first = _wal_first_needed(infos, segment_size)
    by_timeline = {}
    for name in held:
        if wal.is_segment_name(name):
            by_timeline.setdefault(wal.timeline_of(name), []).append(wal.segment_number(name, segment_size))
    gaps = []
    for timeline, numbers in sorted(by_timeline.items()):
        numbers = sorted(n for n in numbers if first is None or n >= first)
        for low, high in zip(numbers, numbers[1:]):
            if high > low + 1:
                gaps.append(
                    (
                        wal.segment_name(timeline, low + 1, segment_size),
                        wal.segment_name(timeline, high - 1, segment_size),
                    )
                )
    return gaps


def apply_retention(params: Mapping[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    """The bucket's own retention policy over its backups (a keep in the catalog counts there too), then the WAL
    no backup left needs. A backup's backup.info goes first, so that it is never listed half deleted."""
    layout, bucket, local, infos = _open_copy(params)
    policy = retention.parse_policy(params['retention_policy'])
    minimum = retention.validate_minimum_redundancy(params['minimum_redundancy'])
    keeps = dict((b, k) for b, k in local.keeps.items() if b in infos)
    statuses = retention.classify(infos, keeps, policy, minimum, catalog.now_utc())
    removed = [b for b in infos if statuses.get(b) == retention.OBSOLETE]
    kept = dict((b, i) for b, i in infos.items() if b not in removed)
    segment_size = local.segment_size
    wals = bucket.wals()
    removable = retention.removable_wals(sorted(wals), kept, statuses, segment_size)
    result = dict(
        changed=bool(removed or removable),
        server=params['server'],
        bucket=bucket.where,
        retention_status=statuses,
        removed_backups=removed,
        removed_wals=len(removable),
        busy=False,
    )
    if check_mode:
        return result
    try:
        lock = lockfile.ServerLock(layout, 'cloud').acquire()  # never while a copy of this server runs
    except lockfile.LockBusy:  # that run's retention comes after its copy
        return dict(result, changed=False, busy=True, removed_backups=[], removed_wals=0)
    try:
        for backup_id in removed:
            bucket.delete([bucket.key('base', backup_id, 'backup.info')])
            bucket.delete(o['Key'] for o in bucket.backup_objects(backup_id))
        bucket.delete(wals[n]['Key'] for n in removable)
    finally:
        lock.release()
    return result


# -- a catalog staged from the bucket, for a recovery without any backup server -------------------------------


def _download(bucket, key, path, mtime):
    """Fetch an object into path (atomically); its mtime is when the catalog archived it (our metadata), else when it
    was uploaded (barman-cloud's, which records no archive time). Returns that time."""
    tmp = path + '.part'
    try:
        answer = bucket.call('read %s' % key, bucket.client.get_object, Bucket=bucket.name, Key=key)
        with open(tmp, 'wb') as handle:
            shutil.copyfileobj(answer['Body'], handle, 1024 * 1024)
    except (OSError, bucket.transfer_errors) as error:
        raise CloudError(
            'cannot fetch %s from the bucket: %s' % (key, error), 'Check the endpoint and the space'
        ) from None
    archived = answer.get('Metadata', {}).get(ARCHIVED_META)
    when = float(archived) if archived else mtime
    os.rename(tmp, path)
    os.utime(path, (when, when))
    return when


def _extract(bucket, key, root):
    """Stream a tar (gzip'd, bzip2'd or not) from the bucket into root: regular files and directories inside root
    only (a link in a backup's tar could reach outside the staging directory: refused); pg_wal's content and
    pg_tblspc's links are not taken (recovery makes its own)."""
    os.makedirs(root, 0o700, exist_ok=True)

    def refuse(member, why):
        return CloudError(
            '%s holds %s, %s: a backup never does' % (key, member.name, why),
            'Check what wrote this object (a bucket others may write to?); nothing of it was used',
        )

    try:
        body = bucket.call('read %s' % key, bucket.client.get_object, Bucket=bucket.name, Key=key)['Body']
        with tarfile.open(fileobj=body, mode='r|*') as tar:
            for member in tar:
                name = os.path.normpath(member.name)
                if name.startswith(('/', '..')):
                    raise refuse(member, 'a path outside its directory')
                if name.split('/')[0] in ('pg_wal', 'pg_tblspc') and name not in DATA_EMPTY_DIRS:
                    continue
                if name in DATA_EMPTY_DIRS and not member.isdir():  # a link to the original's WAL directory
                    os.makedirs(os.path.join(root, name), 0o700, exist_ok=True)
                    continue
                if not (member.isreg() or member.isdir()):
                    raise refuse(member, 'a link or special file')
                member.mode &= 0o700 if member.isdir() else 0o600
                tar.extract(member, root, set_attrs=True, **_TAR_FILTER)
    except (tarfile.TarError, OSError, bucket.transfer_errors) as error:
        raise CloudError(
            'cannot fetch and unpack %s from the bucket: %s' % (key, error),
            'A tar compressed with lz4 or snappy (barman-cloud-backup --lz4/--snappy) is not read here: only plain, '
            'gzip and bzip2 tars; otherwise check the endpoint and the space under the staging directory',
        ) from None


_TAR_FILTER = {'filter': 'tar'} if hasattr(tarfile, 'tar_filter') else {}  # the checks above are ours anyway


def stage(params: Mapping[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    """Rebuild under ``barman_home`` a catalog of the server from the bucket alone: the backup the target needs
    (and its parents), the WAL from its start to the target, and an xlog.db with their archive times. The same
    refusals as a recovery from a catalog (no backup before the target, a target past the newest WAL, a gap) come
    before any backup data is fetched."""
    server = params['server']
    bucket = Bucket(params, server)
    bucket.open()
    infos = bucket.backups()
    if not infos:
        raise CloudError(
            '%s holds no backup of %s' % (bucket.where, server),
            'Check barman_cloud_bucket and barman_cloud_prefix, and that a backup was copied there (cloud.yml)',
            code='NO_SUCH_BACKUP',
        )
    kind, value = recovery.the_target(params)
    backup_id, info = recovery.choose_backup(infos, kind, value, params.get('backup_id'))
    backups = chain.ancestry(infos, backup_id)
    layout = catalog.ServerLayout(params['barman_home'], server)
    objects = bucket.wals()
    names = _wal_names_for(objects, info, kind, value)
    unreadable = [n for n in names if objects[n]['compression'] in UNREADABLE_WAL]
    if unreadable:
        raise CloudError(
            '%s is compressed with %s, which a recovery here cannot read'
            % (unreadable[0], objects[unreadable[0]]['compression']),
            'Recover it with barman-cloud-wal-restore, or archive with gzip, bzip2, zstd or lz4',
        )
    stored = dict((each, bucket.backup_objects(each)) for each in backups)
    needed = sum(objects[n]['Size'] for n in names) + sum(o['Size'] for each in backups for o in stored[each])
    result = dict(
        changed=not check_mode,
        server=server,
        bucket=bucket.where,
        backup_id=backup_id,
        chain=backups,
        barman_home=params['barman_home'],
        wals=len(names),
    )
    if check_mode:
        return result
    if os.path.isdir(layout.root) and os.listdir(layout.root):
        raise CloudError(
            '%s is not empty: a catalog staged from a bucket goes into a directory of its own' % layout.root,
            'Remove it (an earlier recovery from the bucket left it) or give another staging directory',
            code='INVALID_ARGUMENT',
        )
    os.makedirs(layout.barman_home, 0o700, exist_ok=True)
    free = shutil.disk_usage(layout.barman_home).free
    if free < needed * 1.1 + 1024**3:  # with a margin: what the bucket holds compressed may be larger unpacked
        raise CloudError(
            '%s needs about %d MB for the backup and WAL from the bucket; its filesystem has %d MB free'
            % (layout.barman_home, needed // 1024**2, free // 1024**2),
            'Free space there (the recovered copy needs as much again), or recover on another host',
            code='NOT_ENOUGH_SPACE',
        )
    catalog.ensure_directories(layout)
    catalog.atomic_write(os.path.join(layout.root, STAGE_MARKER), '{"bucket": "%s"}\n' % bucket.where)

    def fetch_wal(name):
        entry = objects[name]
        path = layout.wal_path(name)
        os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
        when = _download(bucket, entry['Key'], path, entry['LastModified'].timestamp())
        return (name, entry['Size'], when, entry['compression'])

    xlogdb.append_xlog_db(layout.xlog_db, _in_parallel(bucket, fetch_wal, names))
    # The archive's refusals, on what was fetched, before the backup's data is.
    recovery.wal_needed_for_target(wal_store.WalArchive(params['barman_home'], server), info, kind, value)
    started = time.time()
    for each in backups:
        for entry in stored[each]:
            base = entry['Key'].rsplit('/', 1)[-1]
            stem = base.split('.', 1)[0].split('_', 1)[0]
            if stem == 'data':
                _extract(bucket, entry['Key'], layout.backup_data_dir(each))
            elif stem.isdigit() and '.tar' in base:
                _extract(bucket, entry['Key'], layout.backup_tablespace_dir(each, int(stem)))
        infofile.write_backup_info(layout.backup_info_path(each), infos[each])
    result['seconds'] = round(time.time() - started, 3)
    return result


def _wal_names_for(objects, info, kind, value):
    """The WAL recovery to the target needs from the bucket: every history file, and each segment from the
    backup's first on, up to the one holding a target LSN (the backup's end for an immediate target), else all of
    them, as a recovery from a catalog copies along. An object's time is when it was uploaded, not archived: it
    cannot say which segment holds a target time."""
    segment_size = info['xlog_segment_size']
    first = wal.segment_number(info['begin_wal'], segment_size)
    last = None
    if kind == 'target_immediate':
        last = wal.segment_number(info['end_wal'], segment_size)
    elif kind == 'target_lsn':
        last = wal.segment_number(wal.lsn_segment_name(value, 1, segment_size), segment_size)
    names = []
    for name in sorted(objects):
        parsed = wal.parse_wal_name(name)
        if parsed.kind == 'history':
            names.append(name)
            continue
        segno = wal.segment_number(name[:24], segment_size)
        if segno < first or (last is not None and segno > last):
            continue
        names.append(name)
    return names
