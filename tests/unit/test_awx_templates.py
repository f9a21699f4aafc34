"""awx/barman-postgresql.json, as `awx import` reads it: every job template refers to the same project and
inventory, names itself and its schedules consistently, runs a playbook of this checkout, and asks survey
questions whose defaults are answers it accepts. A slip there shows only when someone imports it."""

import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_ORG = {'name': 'Default', 'type': 'organization'}

with open(os.path.join(ROOT, 'awx', 'barman-postgresql.json')) as _handle:
    TEMPLATES = json.load(_handle)['job_templates']


def _by_name(name):
    (found,) = [t for t in TEMPLATES if t['name'] == 'barman.postgresql ' + name]
    return found


@pytest.mark.parametrize('job_template', TEMPLATES, ids=lambda t: t['name'])
def test_a_template_is_consistent(job_template):
    name = job_template['name']
    assert job_template['natural_key'] == {'organization': DEFAULT_ORG, 'name': name, 'type': 'job_template'}
    assert job_template['project'] == {'organization': DEFAULT_ORG, 'name': 'barman.postgresql', 'type': 'project'}
    assert job_template['inventory'] == {
        'organization': DEFAULT_ORG,
        'name': 'PostgreSQL estate',
        'type': 'inventory',
    }
    assert job_template['job_type'] == 'run' and job_template['allow_simultaneous'] is False
    assert isinstance(json.loads(job_template['extra_vars']), dict)
    assert re.fullmatch(r'playbooks/\w+\.yml', job_template['playbook'])
    assert os.path.isfile(os.path.join(ROOT, job_template['playbook'])), job_template['playbook']

    for schedule in job_template['related']['schedules']:
        assert schedule['natural_key'] == {
            'name': schedule['name'],
            'type': 'schedule',
            'unified_job_template': job_template['natural_key'],
        }
        assert re.fullmatch(
            r'DTSTART;TZID=UTC:\d{8}T\d{6} RRULE:FREQ=(HOURLY|DAILY|WEEKLY);INTERVAL=1(;BYDAY=(MO|TU|WE|TH|FR|SA|SU))?',
            schedule['rrule'],
        ), schedule['rrule']

    survey = job_template['related'].get('survey_spec')
    assert job_template['survey_enabled'] is bool(survey), 'survey_enabled without a survey_spec, or the reverse'
    if survey:
        assert survey['name'] == name
        variables = [q['variable'] for q in survey['spec']]
        assert len(variables) == len(set(variables)), variables
        for question in survey['spec']:
            assert question['type'] in ('text', 'multiplechoice'), question
            assert isinstance(question['required'], bool) and isinstance(question['default'], str), question
            if question['type'] == 'multiplechoice':
                assert question['required'] and question['default'] in question['choices'], question


def test_verify_asks_what_verify_yml_reads_and_runs_weekly():
    verify = _by_name('verify')
    assert verify['playbook'] == 'playbooks/verify.yml'
    assert verify['ask_limit_on_launch'] is True and verify['forks'] == _by_name('status')['forks']
    spec = {q['variable']: q for q in verify['related']['survey_spec']['spec']}
    assert list(spec) == ['servers', 'backup_id', 'verify_replay', 'verify_keep_failed']
    assert not spec['servers']['required'] and spec['servers']['default'] == ''
    assert not spec['backup_id']['required'] and spec['backup_id']['default'] == ''
    assert (spec['verify_replay']['choices'], spec['verify_replay']['default']) == (['immediate', 'all'], 'immediate')
    # A yes/no question as recover's recover_in_place is: the playbook reads it with | bool.
    in_place = {q['variable']: q for q in _by_name('recover')['related']['survey_spec']['spec']}['recover_in_place']
    keep = spec['verify_keep_failed']
    assert (keep['type'], keep['choices'], keep['default']) == (in_place['type'], in_place['choices'], 'no')
    (schedule,) = verify['related']['schedules']
    assert schedule['name'] == 'barman.postgresql weekly verification' and schedule['extra_data'] == {}
    assert schedule['rrule'].endswith('RRULE:FREQ=WEEKLY;INTERVAL=1;BYDAY=SU'), schedule['rrule']
