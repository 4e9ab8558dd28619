"""The kill -9 soak of bench/soak.py, CI-sized: the same code (tests/support/soak.py), a few cycles."""

from __future__ import annotations

from tests.support.soak import SoakConfig, check_groups, run_soak


def test_a_few_kill_9_cycles_lose_nothing_and_the_backups_and_archive_restore_it_all(tmp_path):
    config = SoakConfig(cycles=4, clients=3, databases=2, seed=14, min_run=0.3, max_run=0.8, backup_chance=1.0)
    result = run_soak(config, str(tmp_path))
    assert result.ok, "\n".join(result.lines())
    assert result.cycles == 4
    assert result.commits_acknowledged > 100
    # the first full backup, the one after the cycles, and whatever the kills let finish
    assert result.backups_taken >= 2 and result.backups_verified == result.backups_taken
    assert result.backups_taken + result.backups_interrupted == 2 + config.cycles
    assert result.segments_archived > 0
    # the last backup is an incremental on a chain whose links crossed kills
    assert result.restore.where.startswith("restore of ") and result.restore.where.endswith("incremental.backup")
    assert result.restore.expected > 0
    assert result.pitr.expected == result.commits_acknowledged


def test_the_check_finds_a_lost_commit_and_a_half_present_transaction():
    acked = [("soak0", 1, 1, 2), ("soak0", 1, 2, 3), ("soak1", 2, 1, 2)]
    whole = {"soak0": [(1, 1, 2, 2, 2), (1, 2, 3, 3, 3)], "soak1": [(2, 1, 2, 2, 2), (2, 2, 4, 4, 4)]}
    check = check_groups("whole", whole, acked)
    assert (check.lost, check.half_present, check.unacknowledged_present, check.ok) == (0, 0, 1, True)
    damaged = {"soak0": [(1, 2, 2, 3, 3)], "soak1": [(2, 1, 2, 2, 2), (2, 2, 1, 4, 4)]}
    check = check_groups("damaged", damaged, acked)
    # (soak0, 1, 1) is missing; (soak0, 1, 2) has 2 of its 3 rows, (soak1, 2, 2) 1 of 4
    assert (check.lost, check.half_present, check.ok) == (1, 2, False)
