"""Config strictness (issue 12): unknown recipes, non-boolean switches, out-of-range and non-finite values,
broken YAML files, and sweep points that each get their own run directory."""

import json
import subprocess
from pathlib import Path

import pytest
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from eurotron.compose import compose_train
from eurotron.config import ConfigError, load_config_file
from eurotron.validation import validate_train_config

from small_run import SMALL_MODEL, prepare_dataset

DEMO = ["experiment=demo", "parallel=single"]


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    return prepare_dataset(tmp_path_factory.mktemp("data") / "demo")


def _run(bin_dir: Path, app: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / app), *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_unknown_recipe_is_an_error_when_composing():
    with pytest.raises((HydraException, OmegaConfBaseException)) as err:
        compose_train(["experiment=lumi_llama3_8bb", "parallel=single"])
    assert "lumi_llama3_8bb" in str(err.value) and "lumi_llama3_8b" in str(err.value)


@pytest.mark.parametrize("args", [
    ["eurotron-train", "experiment=demoo", "parallel=single"],
    ["eurotron-train", "--multirun", "experiment=demo,nosuch", "parallel=single"],
    ["eurotron-launch", "experiment=lumi_llama3_8bb", "launch.dry_run=true"],
    ["eurotron-launch", "-m", "experiment=demo,nosuch", "cluster=local", "launch.dry_run=true"],
])
def test_cli_refuses_unknown_recipe_before_anything_runs(args, bin_dir, tmp_path):
    done = _run(bin_dir, *args, f"run_dir={tmp_path}/run", cwd=tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    assert "demo" in done.stderr and "lumi_llama3_70b" in done.stderr  # lists what exists
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["data.shuffle=2", "data.shuffle=yes", "model.tie_embeddings=1",
                                      "checkpoint.save_final=on"])
def test_boolean_switch_takes_true_or_false_only(override):
    with pytest.raises((HydraException, OmegaConfBaseException)) as err:
        compose_train(DEMO + [override])
    assert override in str(err.value) and "true or false" in str(err.value.__cause__)


def test_boolean_switch_still_takes_true_and_false():
    cfg, _ = compose_train(DEMO + ["data.shuffle=false", "model.tie_embeddings=true"])
    assert cfg.data.shuffle is False and cfg.model.tie_embeddings is True


@pytest.mark.parametrize("overrides,key", [
    (["optim.lr=inf"], "optim.lr=inf"),
    (["optim.lr=nan"], "optim.lr=nan"),
    (["model.init_std=inf"], "model.init_std=inf"),
    (["model.norm_eps=inf"], "model.norm_eps=inf"),
    (["model.norm_eps=0.5"], "model.norm_eps=0.5"),
    (["model.rope_theta=1e30"], "model.rope_theta=1e+30"),
    (["model.rope_theta=0.5"], "model.rope_theta=0.5"),
    (["optim.weight_decay=-inf"], "optim.weight_decay=-inf"),
    (["optim.beta2=nan"], "optim.beta2=nan"),
    (["scheduler.min_lr_ratio=inf"], "scheduler.min_lr_ratio=inf"),
    (["cluster.peak_flops=inf"], "cluster.peak_flops=inf"),
    (["loss=goldfish", "loss.k=1"], "loss.k=1"),
    (["loss.strategy=hsah"], "loss.strategy='hsah'"),
    (["data.seed=-1"], "data.seed=-1"),
    (["train.seed=-3"], "train.seed=-3"),
])
def test_out_of_range_and_non_finite_values_are_named(overrides, key):
    cfg, _ = compose_train(DEMO + overrides)
    with pytest.raises(ConfigError) as err:
        validate_train_config(cfg, world_size=1)
    lines = str(err.value).splitlines()[1:]
    assert any(line.strip().startswith(key) for line in lines), lines
    assert len([line for line in lines if key.split("=")[0] + "=" in line]) == 1  # one line per bad key


@pytest.mark.parametrize("text,expected", [
    ("name: x\nmodel: {hidden_size: 3\n", "not valid YAML at line"),
    ("- a\n- b\n", "holds a YAML list"),
    ("\tname: x\n", "not valid YAML"),
])
def test_bad_yaml_file_is_one_clear_error(tmp_path, text, expected):
    file = tmp_path / "config.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_config_file(file)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "missing.yaml")


def test_config_file_cli_reports_bad_yaml_and_bad_values_without_traceback(tmp_path, bin_dir):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ndata: [1, 2\n")
    typed = tmp_path / "typed.yaml"
    typed.write_text("data:\n  shuffle: 2\n")
    for file, expected in ((broken, "not valid YAML"), (typed, "data.shuffle")):
        done = _run(bin_dir, "eurotron-train", "--config-file", str(file))
        assert done.returncode == 2, done.stderr
        assert expected in done.stderr and "Traceback" not in done.stderr


def test_local_sweep_points_get_their_own_run_dirs_and_a_summary(tmp_path, bin_dir, demo_data):
    run_dir = tmp_path / "sw"
    done = _run(bin_dir, "eurotron-train", "--multirun", "experiment=demo", "parallel=single",
                "optim.lr=1e-3,3e-3", "train.steps=2", "scheduler.warmup_steps=1", f"data.path={demo_data}",
                "name=sw", f"hydra.sweep.dir={run_dir}", "checkpoint.every=0", "eval.every=0",
                "logging.plot_loss_curve=false", *SMALL_MODEL, "data.seq_len=64", "data.global_batch_size=4",
                "data.micro_batch_size=2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for num, lr in ((0, 0.001), (1, 0.003)):
        point = run_dir / str(num)
        records = [json.loads(line) for line in (point / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2]
        assert records[0]["lr"] == pytest.approx(lr)  # warmup of 1 step: full lr at step 1
        assert f"lr: {lr}" in (point / "config.yaml").read_text()
    summary = json.loads((run_dir / "sweep.json").read_text())
    assert [p["run_dir"] for p in summary] == [str(run_dir / "0"), str(run_dir / "1")]
    assert all(p["final_step"] == 2 and p["final_loss"] > 0 for p in summary)
    table = (run_dir / "sweep.md").read_text()
    assert "optim.lr=0.001" in table and "optim.lr=0.003" in table


@pytest.mark.parametrize("sweep", [False, True])
def test_run_dir_that_is_a_file_is_one_clear_error(tmp_path, bin_dir, sweep):
    blocker = tmp_path / "taken"
    blocker.write_text("not a directory")
    args = (["--multirun"] if sweep else []) + [*DEMO, f"run_dir={blocker}", "optim.lr=1e-3,2e-3" if sweep else "optim.lr=1e-3"]
    done = _run(bin_dir, "eurotron-train", *args, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"run_dir={blocker} is not a writable directory" in done.stderr
    assert blocker.read_text() == "not a directory"


def test_launch_refuses_a_run_dir_that_is_a_file(tmp_path):
    from eurotron.errors import UserError
    from eurotron.launch.submit import check_run_dir

    blocker = tmp_path / "taken"
    blocker.write_text("x")
    with pytest.raises(UserError, match="is not a writable directory"):
        check_run_dir(blocker, "name: x\n", force=False)
