"""The playbooks as AWX runs them: through ansible-runner, with the job templates' extra vars and the
survey's answers from awx/barman-postgresql.json, and the set_stats artifacts AWX shows and passes on."""

import json
import os
import time

import ansible_runner
import drills
import pytest
from labhosts import ROOT, VENV_BIN, psql, servers, switch_wal

TEMPLATES = os.path.join(ROOT, 'awx', 'barman-postgresql.json')


def template(name):
    with open(TEMPLATES) as handle:
        (found,) = [t for t in json.load(handle)['job_templates'] if t['name'] == 'barman.postgresql ' + name]
    return found


def survey_vars(job_template, answers):
    """Extra vars as AWX builds them: the template's extra_vars, then every survey question's answer
    (a blank text for an unanswered optional one, the default for the others)."""
    variables = json.loads(job_template['extra_vars'])
    for question in job_template.get('related', {}).get('survey_spec', {}).get('spec', []):
        name = question['variable']
        assert name in answers or not question['required'] or question['default'], name
        variables[name] = answers.get(name, question['default'])
        if question['type'] == 'multiplechoice':
            assert variables[name] in question['choices'], (name, variables[name])
    unknown = set(answers) - set(variables)
    assert not unknown, 'answers to questions the survey does not ask: %s' % unknown
    return variables


def launch(name, tmp_path, answers=None, limit=None):
    """Run a job template's playbook through ansible-runner; returns (runner, set_stats data)."""
    job_template = template(name)
    private_data_dir = tmp_path / name
    private_data_dir.mkdir()
    runner = ansible_runner.run(
        private_data_dir=str(private_data_dir),
        project_dir=ROOT,
        playbook=job_template['playbook'],
        inventory=os.path.join(ROOT, 'inventory', 'lab.yml'),
        extravars=survey_vars(job_template, answers or {}),
        limit=limit,
        # As AWX runs a job: from the project directory, the collection found beside the playbooks.
        envvars=dict(PATH=VENV_BIN + os.pathsep + os.environ['PATH'], ANSIBLE_COLLECTIONS_PATH='/nonexistent'),
        quiet=True,
    )
    stats = [e for e in runner.events if e['event'] == 'playbook_on_stats']
    assert stats, 'no playbook_on_stats event in the artifacts of %s' % name
    return runner, stats[-1]['event_data'].get('artifact_data', {})


def output(runner):
    return runner.stdout.read()[-4000:]


def test_backup_status_and_recover_as_awx_runs_them(configured, tmp_path):
    psql('pg1', 'DROP TABLE IF EXISTS awx; CREATE TABLE awx (id int)')
    runner, artifacts = launch('backup', tmp_path)
    assert runner.rc == 0, output(runner)
    assert [artifacts['barman_backups'][s]['status'] for s in ('pg1', 'pg2')] == ['DONE', 'DONE'], artifacts
    backup_id = artifacts['barman_backups']['pg1']['backup_id']

    runner, artifacts = launch('status', tmp_path)
    assert runner.rc == 0, output(runner)
    assert set(artifacts['barman_status']) == set(servers())
    assert artifacts['barman_status']['pg1']['nagios'].startswith('BARMAN OK - pg1'), artifacts

    psql('pg1', 'INSERT INTO awx VALUES (1)')
    time.sleep(1)
    target = psql('pg1', 'SELECT clock_timestamp()')
    time.sleep(1)
    psql('pg1', 'INSERT INTO awx VALUES (2)')
    switch_wal('pg1')
    data_dir = os.path.join(drills.DRILLS, 'awx')
    drills.clear(data_dir)
    answers = dict(server='pg1', target_kind='time', target_value=target, recover_dir=data_dir, recover_port='6444')
    runner, artifacts = launch('recover', tmp_path, answers)
    try:
        assert runner.rc == 0, output(runner)
        recovered = artifacts['barman_recovery']
        assert recovered['backup_id'] == backup_id, artifacts
        assert drills.query(6444, 'SELECT id FROM awx ORDER BY id') == ['1']
    finally:
        drills.stop_cluster(data_dir)


@pytest.mark.parametrize(
    'answers, message',
    [
        (dict(server='pg1', target_kind='time'), 'need target_value'),
        (dict(server='pg1', recover_in_place='yes', recover_in_place_confirm='pg2'), 'confirm with'),
        (dict(server='nosuch'), 'Say which server to recover'),
    ],
)
def test_a_wrong_survey_answer_is_refused_before_anything_happens(configured, tmp_path, answers, message):
    runner, _artifacts = launch('recover', tmp_path, answers)
    assert runner.rc != 0 and message in output(runner), output(runner)
    assert 'Recover a PostgreSQL server' not in output(runner), 'the refusal must come before the recovery play'
    assert psql('pg1', 'SELECT 1') == '1'


def test_verify_as_awx_runs_it(configured, verifications_forgotten, tmp_path):
    # A backup of pg1 of its own, so that this test does not depend on another one's: the newest DONE
    # backup, not verified yet, is the one the survey's blank backup_id chooses.
    runner, artifacts = launch('backup', tmp_path, limit='pg1')
    assert runner.rc == 0, output(runner)
    assert artifacts['barman_backups']['pg1']['status'] == 'DONE', artifacts
    backup_id = artifacts['barman_backups']['pg1']['backup_id']

    runner, artifacts = launch('verify', tmp_path, dict(servers='pg1'))
    assert runner.status == 'successful' and runner.rc == 0, output(runner)
    verification = artifacts['barman_verifications']['pg1']
    assert verification['result'] == 'PASSED', artifacts
    assert verification['backup_id'] == backup_id, artifacts
    assert set(artifacts['barman_verifications']) == {'pg1'}, 'servers=pg1 verifies pg1 only: %s' % artifacts
