# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment:
    # Which catalog a module works on (module_utils/catalog.py).
    DOCUMENTATION = r"""
options:
  server:
    description:
      - Name of the PostgreSQL server in the catalog (its directory under O(barman_home)).
      - Letters, digits, C(.), C(_) and C(-), starting with a letter or digit.
    type: str
    required: true
  barman_home:
    description:
      - The catalog's root directory on the backup server, laid out as Barman does.
    type: path
    default: /var/lib/barman
"""
