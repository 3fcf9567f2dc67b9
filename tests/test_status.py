"""eurotron-status on synthetic run and sweep directories, with stub Slurm commands (squeue answers for a
running job, sacct has no accounting, scontrol remembers an ended job). The real-Slurm check is in
tests/test_launch_move.py."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eurotron.cli import status as cli
from eurotron.launch.status import run_status

STUBS = {
    "squeue": "#!/bin/bash\necho '11|RUNNING|0:20|1:00:00|node1'\n",
    "sacct": "#!/bin/bash\necho 'Slurm accounting storage is disabled' >&2\nexit 1\n",
    "scontrol": "#!/bin/bash\n[ \"$4\" = 12 ] && echo 'JobId=12 JobState=COMPLETED RunTime=00:05:00 ExitCode=0:0 Restarts=1'"
                "\nexit 0\n",
}


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return bin_dir


def make_run(run_dir: Path, steps: int = 100, logged: int = 10, job_ids=("11", "12"), lr: float = 1e-3) -> Path:
    """What launch and the trainer leave: config, launch record, metrics (2 s of wall per step), goodput,
    two complete checkpoints and an incomplete one, the systems history."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"name: demo\ncluster:\n  name: lumi\ntrain:\n  steps: {steps}\n")
    (run_dir / "launch.json").write_text(json.dumps([{"job_ids": list(job_ids)}]))
    with (run_dir / "metrics.jsonl").open("w") as f:
        for step in range(1, logged + 1):
            record = {"step": step, "loss": 5.0 - step * lr * 100, "tokens_per_s": 1000.0 + step, "step_time_s": 1.5,
                      "time_wall_s": 10.0 + 2.0 * step, "goodput_pct": 50.0}
            if step % 5 == 0:
                record["eval_loss"] = 4.5 - step * 0.01
            f.write(json.dumps(record) + "\n")
        f.write(json.dumps({"step": 4, "event": "resume_config_change", "changes": {}}) + "\n")
    (run_dir / "goodput.json").write_text(json.dumps({"attempts": [], "job": {"goodput_pct": 80.5}}))
    for step in (5, 10):
        ckpt = run_dir / "checkpoints" / f"step_{step:08d}"
        ckpt.mkdir(parents=True)
        (ckpt / "trainer.json").write_text("{}")
    (run_dir / "checkpoints" / "step_00000015").mkdir()  # being written: no trainer.json yet
    trained = {"event": "trained", "system": "lumi", "layout": "tp=2 pp=1 dp_replicate=1 dp_shard=2", "world_size": 4,
               "job_id": "11", "first_step": 1, "time": "2026-01-01T00:00:00Z"}
    (run_dir / "systems.jsonl").write_text(  # a line at the step-5 checkpoint, one at the stop, one cut short
        json.dumps({**trained, "last_step": 5, "ended": "running"}) + "\n"
        + json.dumps({**trained, "last_step": 10, "ended": "stopped"}) + '\n{"event": "trai')
    return run_dir


def test_run_status_from_the_run_dir_and_slurm(fake_slurm, tmp_path):
    s = run_status(make_run(tmp_path / "run"))
    assert (s.step, s.total_steps, s.loss) == (10, 100, pytest.approx(4.0))
    assert (s.eval_step, s.eval_loss) == (10, pytest.approx(4.4))
    assert s.tokens_per_s == 1010.0 and s.goodput_pct == 80.5  # goodput.json's job total wins
    assert s.checkpoint == "step_00000010" and s.checkpoint_step == 10  # the incomplete step_15 is not one
    assert s.seconds_per_step == pytest.approx(2.0)  # wall per step, from the goodput totals
    assert s.eta_s == pytest.approx(90 * 2.0)
    running, ended = s.jobs
    assert (running.state, running.source, running.elapsed) == ("RUNNING", "squeue", "0:20")
    assert (ended.state, ended.source, ended.restarts) == ("COMPLETED", "scontrol", 1)
    text = cli.format_run(s)
    assert "11 RUNNING 0:20, 12 COMPLETED" in text and "10 / 100" in text and "00:03:00 at the current speed" in text
    (history,) = [line for line in text.splitlines() if line.startswith("system")]  # the latest line of the stretch
    assert "steps 1-10 on lumi (tp=2 pp=1 dp_replicate=1 dp_shard=2; 4 rank(s)), job 11, stopped" in history


def test_no_accounting_and_no_slurm_say_so(fake_slurm, tmp_path, monkeypatch):
    s = run_status(make_run(tmp_path / "run", job_ids=("11", "99")))
    assert s.jobs[1].state == "unknown (no accounting)"  # neither squeue, sacct nor scontrol knows it
    monkeypatch.setenv("PATH", "/nonexistent")
    s = run_status(tmp_path / "run")
    assert all(j.state.startswith("unknown (no squeue on PATH") for j in s.jobs)


def test_finished_run_without_speed_records(fake_slurm, tmp_path):
    s = run_status(make_run(tmp_path / "run", steps=10))
    assert s.finished and cli._eta(s) == "done"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text("name: x\ntrain: {steps: 5}\n")
    s = run_status(empty)
    assert s.step is None and s.jobs == [] and "none recorded" in cli.format_run(s) and cli._eta(s) == "-"


def test_sweep_rows_json_and_loss_curves_png(fake_slurm, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    points = []
    for num, lr in enumerate((1e-3, 3e-3)):
        run_dir = make_run(sweep / str(num), job_ids=(str(11 + num),), lr=lr)
        points.append({"num": num, "overrides": ["experiment=demo", f"optim.lr={lr}"], "run_dir": str(run_dir),
                       "job_ids": [str(11 + num)]})
    points.append({"num": 2, "overrides": ["experiment=demo", "optim.lr=0.01"], "run_dir": str(sweep / "2"),
                   "job_ids": []})  # its submission failed: nothing was written
    (sweep / "sweep.json").write_text(json.dumps(points))
    cli.main([str(sweep)])
    out = capsys.readouterr().out
    rows = out.splitlines()
    assert rows[0] == f"sweep {sweep}: 3 point(s)"
    assert rows[2].startswith("#0 optim.lr=0.001") and "11 RUNNING" in rows[2] and "4.0000" in rows[2]
    assert rows[3].startswith("#1 optim.lr=0.003") and "2.0000" in rows[3]
    assert rows[4].startswith("#2 optim.lr=0.01") and rows[4].split()[-1] == "-"
    png = sweep / "loss_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"loss curves: {png}" in out
    cli.main([str(sweep), "--json", "--no-plot", "--no-slurm"])
    data = json.loads(capsys.readouterr().out)
    assert [p["step"] for p in data["points"]] == [10, 10, None] and data["loss_curves"] is None
    assert data["points"][0]["jobs"][0]["state"] == "not queried"


def test_json_of_a_run_and_clear_errors(fake_slurm, tmp_path):
    run_dir = make_run(tmp_path / "run")
    exe = Path(sys.executable).parent / "eurotron-status"
    done = subprocess.run([str(exe), str(run_dir), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["step"] == 10 and data["checkpoint"] == "step_00000010" and data["finished"] is False
    assert [j["state"] for j in data["jobs"]] == ["RUNNING", "COMPLETED"]
    for bad, message in ((tmp_path / "nowhere", "is not a directory"), (tmp_path, "is not a run directory")):
        done = subprocess.run([str(exe), str(bad)], capture_output=True, text=True)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_a_single_point_is_labelled_by_its_number_and_long_labels_are_cut(fake_slurm, tmp_path):
    sweep = tmp_path / "sweep"
    run_dir = make_run(sweep / "0", job_ids=("11",))
    (sweep / "sweep.json").write_text(json.dumps([{"num": 0, "overrides": ["optim.lr=0.001"], "run_dir": str(run_dir)}]))
    (point,) = cli.sweep_status(sweep)
    assert point.label == "#0 -"
    assert cli._short("x" * 100) == "x" * 57 + "..."
