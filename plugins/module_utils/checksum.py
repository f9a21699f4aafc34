# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The checksum that travels with each WAL file from the sender to the receiver.

SSH already authenticates every byte on the wire; this check is end to end, from the file the
sender read to the file the receiver wrote, against truncation, framing and copying faults. For
that a CRC-32 is the usual tool (PostgreSQL's WAL records and backup manifests use CRC-32C) and
costs less than half of a sha256 per segment. sha256 stays accepted: it is what senders before
1.1.0 send, and what a request that names no checksum means.
"""

import hashlib
import zlib
from typing import Any

CHECKSUMS = ('crc32', 'sha256')
SENT = 'crc32'
WHEN_UNNAMED = 'sha256'


class _Crc32:
    def __init__(self):
        self.value = 0

    def update(self, data):
        self.value = zlib.crc32(data, self.value)

    def hexdigest(self):
        return '%08x' % self.value


def new(name: str) -> Any:
    """A running checksum (update(bytes), hexdigest()) of the kind ``name``."""
    if name == 'crc32':
        return _Crc32()
    if name == 'sha256':
        return hashlib.sha256()
    raise ValueError('unknown checksum %r: expected one of %s' % (name, ', '.join(CHECKSUMS)))
