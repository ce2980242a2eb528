"""slmops.threads: a step's compute threads are its share of the cores, never more than are free."""

from __future__ import annotations

import pytest

from slmops import threads


@pytest.mark.parametrize("env, cores, busy, expected", [
    ({"OMP_NUM_THREADS": "3"}, 8, 7.0, 3),   # the runner's share (or the user's) wins
    ({"OMP_NUM_THREADS": " 1 "}, 8, 0.0, 1),
    ({}, 8, 0.0, 8),                          # an idle machine: every core
    ({}, 8, 2.4, 6),                          # 5.6 free -> 6
    ({}, 2, 1.0, 1),                          # one core busy with a test run: one thread
    ({}, 2, 1.6, 1),                          # never fewer than one
    ({}, 2, 9.0, 1),
    ({"OMP_NUM_THREADS": "0"}, 4, 0.0, 4),    # not a count: ignored
    ({"OMP_NUM_THREADS": "many"}, 4, 2.0, 2),
])
def test_choose(env, cores, busy, expected, monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: cores)
    count, why = threads.choose(env, busy=busy)
    assert count == expected and why


def test_busy_cores_reads_the_idle_share_of_proc_stat(monkeypatch):
    samples = iter([(100, 1000), (150, 1200)])   # 50 of 200 jiffies idle: 3/4 of the CPUs busy
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    assert threads.busy_cores(sample_s=0) == pytest.approx(3.0)


def test_without_proc_stat_every_core_is_used(monkeypatch, tmp_path):
    assert threads._cpu_times(str(tmp_path / "missing")) is None
    monkeypatch.setattr(threads, "_cpu_times", lambda: None)
    monkeypatch.setattr(threads, "available_cores", lambda: 6)
    assert threads.choose({})[0] == 6


def test_cpu_times_parses_the_first_line(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  10 2 30 400 5 6 7 8 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n")
    assert threads._cpu_times(str(stat)) == (405, 468)


def test_ort_overlay_names_the_decoder_session_threads():
    import json

    assert json.loads(threads.ort_overlay(3)) == {"model": {"decoder": {"session_options": {"intra_op_num_threads": 3}}}}


def test_apply_gives_the_count_to_torch(monkeypatch, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert threads.apply({"OMP_NUM_THREADS": "1"}) == 1 and torch.get_num_threads() == 1
        assert "compute threads: 1 (OMP_NUM_THREADS=1)" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)

