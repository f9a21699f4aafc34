# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""``meta/<backup_id>-verification.json``: the outcome of a backup's last verification (verify.yml).

One JSON object: ``result`` (PASSED or FAILED), ``verified_at`` (UTC, ISO 8601), ``duration`` (seconds),
``replay`` (immediate or all), ``host`` (where the copy ran), ``steps`` ([{name, result, detail}], in the
order they ran) and ``failures`` ([{step, message, and file/relation/query ... where known}]). Barman
ignores the file; a backup without one was never verified.
"""

import datetime
import json
from typing import Any, Dict, Iterable, List, Mapping, Optional

from ansible_collections.barman.postgresql.plugins.module_utils.catalog import (
    CatalogError,
    ServerLayout,
    atomic_write,
    read_text,
)

PASSED = 'PASSED'
FAILED = 'FAILED'
RESULTS = (PASSED, FAILED)


class MalformedVerification(CatalogError, ValueError):
    """A verification record that cannot be read back."""

    code = 'MALFORMED_VERIFICATION'


def verified_at(record: Mapping[str, Any]) -> datetime.datetime:
    """When the verification finished, an aware UTC datetime."""
    return datetime.datetime.strptime(record['verified_at'], '%Y-%m-%dT%H:%M:%SZ').replace(tzinfo=datetime.timezone.utc)


def format_time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def read_verification(layout: ServerLayout, backup_id: str) -> Optional[Dict[str, Any]]:
    """The backup's verification record, None when it was never verified."""
    path = layout.verification_path(backup_id)
    text = read_text(path)
    if text is None:
        return None
    try:
        record = json.loads(text)
        if record.get('result') not in RESULTS:
            raise ValueError('result is %r' % record.get('result'))
        verified_at(record)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise MalformedVerification(
            '%s is not a verification record (%s)' % (path, exc),
            'Remove it: the next verify.yml run verifies the backup again and writes a new one',
            path=path,
        ) from None
    return record


def write_verification(layout: ServerLayout, backup_id: str, record: Mapping[str, Any]) -> None:
    atomic_write(layout.verification_path(backup_id), json.dumps(record, indent=2, sort_keys=True) + '\n', 0o600)


def newest_passed(records: Mapping[str, Mapping[str, Any]], ordered_ids: Iterable[str]) -> Optional[str]:
    """The newest backup (of ``ordered_ids``, oldest first) whose last verification PASSED."""
    passed = [b for b in ordered_ids if records.get(b, {}).get('result') == PASSED]
    return passed[-1] if passed else None


def failure_texts(record: Mapping[str, Any]) -> List[str]:
    """Each failure of ``record`` as 'step: message', in order; tolerant of odd entries, as reports must not fail."""
    failures = record.get('failures')
    texts = []
    for failure in failures if isinstance(failures, list) else []:
        if isinstance(failure, Mapping):
            texts.append('%s: %s' % (failure.get('step', '?'), failure.get('message', '?')))
        else:
            texts.append(str(failure))
    return texts
