"""No config value can run a command: rendered scripts are executed (with stub Slurm commands) on values
holding $(…), backticks, quotes, ; and newlines, and nothing but the training command runs."""

import re

import pytest

from eurotron.config import ConfigError
from eurotron.launch import shell
from eurotron.launch.render import render_job
from eurotron.launch.validation import check_launch

from launch_support import compose, make_fake_slurm, read_args, recorded_train, run_script, system_overrides


def evil(marker) -> str:
    """One string with every way to break out of a shell word, each of which would create `marker`."""
    return (f"a$(touch {marker})b`touch {marker}`c'd\"e;touch {marker};f\ng touch {marker}\n"
            f"$((1+1)) ${{HOME:-x}} \\ '$(touch {marker})' \"`touch {marker}`\" && touch {marker} | x > {marker}")


def checked(cfg):
    return check_launch(cfg, check_data=False)


@pytest.mark.parametrize("pattern", ["srun", "torchrun"])
def test_hostile_values_reach_the_program_verbatim_and_run_nothing(pattern, tmp_path):
    marker = tmp_path / "PWNED"
    bad = evil(marker)
    run_dir = tmp_path / "run"
    cfg = compose(system_overrides("generic", f"cluster.launcher.pattern={pattern}", f"run_dir={run_dir}"))
    cfg.name = bad
    c = cfg.cluster
    c.name = bad
    c.env = {"EVIL": bad, "NODE": "$SLURM_NODEID-x"}
    c.storage.hf_home = bad
    c.storage.node_local = bad
    c.launcher.nccl_debug = bad
    c.launcher.master_addr_suffix = bad
    c.launcher.modules = [bad]
    c.slurm.cpu_bind = bad
    c.launcher.train_command = ["eurotron-train", bad]
    c.launcher.venv = bad  # sourcing it fails (no such file); the stub on PATH stays the training command
    job = render_job(cfg, run_dir, tmp_path, checked(cfg))
    script = run_dir / "job.sbatch"
    run_dir.mkdir()
    script.write_text(job.script)
    env = make_fake_slurm(tmp_path)
    done = run_script(script, env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not marker.exists(), "a config value ran a command"
    train = recorded_train(tmp_path)
    assert train["argv"] == [bad, "--config-file", str(run_dir / "config.yaml")]
    assert train["env"]["EVIL"] == bad
    assert train["env"]["HF_HOME"] == bad
    assert train["env"]["NCCL_DEBUG"] == bad
    assert train["env"]["TRITON_CACHE_DIR"] == f"{bad}/eurotron-{env['USER']}/triton"
    assert train["env"]["NODE"] == "0-x"  # $NAME is the one thing that expands, per task
    assert train["env"]["MASTER_ADDR"] == "localhost" + bad
    assert read_args(tmp_path / "module.args") == ["load", bad]
    assert f"--cpu-bind={bad}" in read_args(tmp_path / "srun.args")


def test_hostile_container_values_and_edf(tmp_path):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    marker = tmp_path / "PWNED"
    bad = evil(marker)
    run_dir = tmp_path / "run"
    cfg = compose(system_overrides("vega", f"run_dir={run_dir}"))
    cfg.cluster.container.image = bad
    cfg.cluster.container.binds = [bad]
    job = render_job(cfg, run_dir, tmp_path, checked(cfg))
    run_dir.mkdir()
    (run_dir / "job.sbatch").write_text(job.script)
    env = make_fake_slurm(tmp_path)
    done = run_script(run_dir / "job.sbatch", env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not marker.exists()
    args = read_args(tmp_path / "singularity.args")
    assert args[:5] == ["exec", "--nv", "--bind", bad, bad]
    assert args[-3:] == ["eurotron-train", "--config-file", str(run_dir / "config.yaml")]
    assert recorded_train(tmp_path)["argv"][0] == "--config-file"

    cfg = compose(system_overrides("alps", f"run_dir={run_dir}"))
    cfg.cluster.container.image = bad
    cfg.cluster.container.binds = [bad]
    cfg.cluster.container.annotations = {"com.hooks.x": bad, f"odd key {bad}": "1"}
    edf = tomllib.loads(render_job(cfg, run_dir, tmp_path, checked(cfg)).files["environment.toml"])
    assert edf["image"] == bad and bad in edf["mounts"]
    assert edf["annotations"]["com"]["hooks"]["x"] == bad
    assert edf["annotations"][f"odd key {bad}"] == "1"
    assert not marker.exists()


SBATCH_KEYS = ["account", "partition", "qos", "constraint", "reservation", "time", "mem", "hint"]


@pytest.mark.parametrize("key", [*SBATCH_KEYS, "run_dir"])
@pytest.mark.parametrize("value", ["a\n#SBATCH --wrap=x", "a b", "$(touch x)", "`id`", "a;b", "a'b", 'a"b', "a\rb"])
def test_sbatch_line_values_that_could_escape_are_refused(key, value):
    cfg = compose(system_overrides("generic"))
    if key == "run_dir":
        cfg.run_dir = "/tmp/" + value
    else:
        setattr(cfg.cluster.slurm, key, value)
    full_key = key if key == "run_dir" else f"cluster.slurm.{key}"
    with pytest.raises(ConfigError, match=re.escape(full_key)):
        checked(cfg)


def test_extra_sbatch_options_and_env_names_are_checked():
    for bad in ["--mail-user=a@b\n--wrap=x", "echo hi", "--x=$(id)", "--x=a b"]:
        cfg = compose(system_overrides("generic"))
        cfg.cluster.slurm.extra = [bad]
        with pytest.raises(ConfigError, match=r"cluster\.slurm\.extra\[0\]"):
            checked(cfg)
    cfg = compose(system_overrides("generic"))
    cfg.cluster.env = {"A;touch x": "1"}
    with pytest.raises(ConfigError, match="not a valid environment variable name"):
        checked(cfg)
    checked(compose(system_overrides("generic", "cluster.slurm.extra=['--mail-type=END','--exclusive']")))


def test_expand_only_expands_variable_names():
    assert shell.expand("$A-${B}/c") == '"${A}-${B}/c"'
    assert shell.expand("$(x)`y`\"z\\") == '"\\$(x)\\`y\\`\\"z\\\\"'
    assert shell.expand("${A:-x} $1 $$") == '"\\${A:-x} \\$1 \\$\\$"'
    assert shell.job_name("a b;c\n") == "a_b_c_"
