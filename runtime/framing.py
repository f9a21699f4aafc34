# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How a WAL file travels to a receiver: "put NAME SIZE CHECKSUM", the bytes, their checksum in hex.

Shared by the sender (PostgreSQL's archive_command and its look-ahead agent) and the forwarder (a
primary backup server sending its archive on to a mirror): the receiver reads one framing only.
"""

import errno
import io
import mmap
import os
from typing import Any, BinaryIO, List

from ansible_collections.barman.postgresql.plugins.module_utils import checksum

CHUNK = 1024 * 1024


def put_request(name: str, size: int) -> List[str]:
    """The words of a put of ``size`` bytes named ``name``, with the checksum every sender sends."""
    return ['put', name, str(size), checksum.SENT]


def copy_with_checksum(source: BinaryIO, stream: Any) -> None:
    """The file's bytes, then their checksum in hex and a newline: what the receiver reads after a put.

    The checksum is taken from a read-only map of the file and the bytes go to the pipe with
    sendfile: no copy through Python (measured: with six clusters draining at once, copying was
    most of the sender's CPU on 2 cores). A file that changes in between fails the receiver's check."""
    size = os.fstat(source.fileno()).st_size
    running = checksum.new(checksum.SENT)
    if size == 0 or not _send_mapped(source, stream, size, running):
        source.seek(0)
        running = checksum.new(checksum.SENT)
        for block in iter(lambda: source.read(CHUNK), b''):
            running.update(block)
            stream.write(block)
    stream.write(running.hexdigest().encode('ascii') + b'\n')


def _send_mapped(source, stream, size, running):
    """Checksum ``size`` bytes of ``source`` through a map, then sendfile them into ``stream``.
    False (nothing written) where that cannot work: no file descriptor, or not Linux."""
    try:
        out = stream.fileno()
        with mmap.mmap(source.fileno(), size, prot=mmap.PROT_READ) as view:
            running.update(view)
        stream.flush()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False
    sent = 0
    while sent < size:
        try:
            count = os.sendfile(out, source.fileno(), sent, size - sent)
        except OSError as error:
            if sent == 0 and error.errno in (errno.EINVAL, errno.ENOSYS):
                return False  # this kernel cannot sendfile into a pipe
            raise
        if count == 0:  # the file shrank: the receiver sees a frame cut short and stores nothing
            raise OSError(errno.EIO, 'the file shrank while it was sent')
        sent += count
    return True


def send_file(source: BinaryIO, name: str, stream: Any) -> None:
    """Write one put frame of a stream to ``stream``: the request, then the open file ``source``."""
    size = os.fstat(source.fileno()).st_size
    stream.write((' '.join(put_request(name, size)) + '\n').encode('ascii'))
    copy_with_checksum(source, stream)
