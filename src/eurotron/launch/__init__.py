"""Config → Slurm job: job shape (nodes.py), checks (validation.py), script (render.py with the
templates in launchers/, quoting in shell.py), run directory and sbatch (submit.py), sweeps (sweep.py).
The command is ``eurotron-launch`` (cli/launch.py); the trainer's side of preemption is train/preemption.py."""
