"""benchmarks/gpu_smoke.py --cpu-check: the GPU smoke script runs end to end on CPU (tiny model, seq 256), so it
cannot rot before someone runs it on a GPU; GPU-only parts say they were skipped."""

import json
import os
import subprocess
import sys

import pytest

from launch_support import REPO


def test_gpu_smoke_cpu_check_runs_every_section(tmp_path):
    out = tmp_path / "smoke.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_smoke.py"), "--cpu-check", "--out", str(out)],
                          capture_output=True, text=True, timeout=240, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["torch"] and report["date"] and "--cpu-check" in report["command"]
    sections = report["sections"]
    for gpu_only in ("kernels", "flex"):
        assert sections[gpu_only]["status"] == "skipped" and sections[gpu_only]["error"] == "no GPU"
    dtypes = sections["dtypes"]
    assert dtypes["status"] == "ok", dtypes
    assert dtypes["compute_dtype"] == "torch.bfloat16"
    assert dtypes["weights"] == ["torch.float32"] and dtypes["gradients"] == ["torch.float32"]
    assert dtypes["activations"]["linear_output"] == "torch.bfloat16"
    assert dtypes["optimizer_state"] == ["exp_avg:torch.float32", "exp_avg_sq:torch.float32"]
    mfu = sections["mfu"]
    for name in ("causal eager", "document-masked (CPU path)"):
        row = mfu[name]
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1 and row["estimate_gib"] > 0, row
        assert row["tokens_per_s"] * row["step_time_s"] == pytest.approx(256)  # one row of seq 256 per step
    assert mfu["document-masked flex, compiled + selective_op"] == {"status": "skipped", "error": "no GPU"}
    assert "| causal eager |" in done.stdout and "skipped: no GPU" in done.stdout


def test_a_broken_variant_is_reported_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_smoke

    monkeypatch.setattr(gpu_smoke, "CPU_VARIANTS", {"broken": ["parallel.activation_checkpoint=bogus"],
                                                    "causal eager": gpu_smoke.CAUSAL})
    out = tmp_path / "smoke.json"
    assert gpu_smoke.main(["--cpu-check", "--only", "mfu", "--out", str(out)]) == 0
    mfu = json.loads(out.read_text())["sections"]["mfu"]
    assert mfu["status"] == "ok"
    assert mfu["broken"]["status"] == "failed" and "parallel.activation_checkpoint='bogus'" in mfu["broken"]["error"]
    assert mfu["causal eager"]["tokens_per_s"] > 0
    assert "| broken | failed: ConfigError" in capsys.readouterr().out


def test_goal_ratios_are_speeds_relative_to_the_baseline(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_smoke

    causal, document, compiled = list(gpu_smoke.MFU_VARIANTS)[:3]
    rows = {causal: {"step_time_s": 1.0}, document: {"step_time_s": 1.25}, compiled: {"step_time_s": 1.0}}
    assert gpu_smoke.goal_ratios(rows) == {"document_vs_causal": 0.8, "compiled_vs_eager": 1.25}
    del rows[compiled]
    assert gpu_smoke.goal_ratios(rows)["compiled_vs_eager"] is None
