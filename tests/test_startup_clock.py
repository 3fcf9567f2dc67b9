"""The start-up report's arithmetic (train/startup.py): parts add up to the total; the job start counts."""

import time

from eurotron.train.startup import PARTS, StartupClock


def test_parts_add_up_and_launch_counts_from_the_job_start(monkeypatch):
    monkeypatch.setenv("EUROTRON_JOB_STARTED_AT", "0")  # long before this process: a plain launch part
    clock = StartupClock()
    clock.mark("rendezvous")
    time.sleep(0.02)
    clock.mark("model_build")
    time.sleep(0.01)
    clock.skip()  # the time since the last mark is claimed by no part: "other"
    record = clock.finish()
    assert record["launch_s"] > 0 and record["model_build_s"] >= 0.02
    assert abs(sum(record[f"{p}_s"] for p in (*PARTS, "other")) - record["total_s"]) < 0.01
    assert record["other_s"] >= 0.01
    assert clock.line().startswith(f"start-up: {record['total_s']:.1f} s from job start to the end of the first step: "
                                   f"launch ")


def test_without_a_job_start_it_counts_from_the_process_start(monkeypatch):
    monkeypatch.delenv("EUROTRON_JOB_STARTED_AT", raising=False)
    clock = StartupClock()
    record = clock.finish()
    assert record["launch_s"] == 0.0 and "from process start" in clock.line()
