"""Names of the files eurotron-launch writes into a run directory (torch-free: eurotron-status reads
them on login nodes)."""

SCRIPT_NAME = "job.sbatch"
EDF_NAME = "environment.toml"
CONFIG_NAME = "config.yaml"
LOG_DIR = "logs"
# Every submission's job ids, commands and time (launch/submit.py).
LAUNCH_RECORD = "launch.json"
