"""Parallelism applied to the plain model (DESIGN.md principle 1), one concern per module:

    env.py          process identity under torchrun / srun, device selection
    mesh.py         the ("pp", "dp_replicate", "dp_shard", "tp") DeviceMesh, process-group start-up
    tensor.py       tensor + sequence parallel plans, loss_parallel
    pipeline.py     stage split, stage placement, schedules, tied-embedding gradient sync
    data.py         FSDP2 / HSDP / DDP, mixed precision
    activation.py   activation checkpointing (none / full / selective / selective_op)
    compile.py      per-block torch.compile and where the checkpoint goes around it
    init.py         layout-independent weight initialisation of sharded parameters
    grads.py        global gradient-norm clipping across TP / PP / DP
    parallelize.py  the one parallelize function and this rank's ParallelModel
    layout.py       the layout report printed at start
    scale.py        the fake-process-group scale check (1024 ranks without GPUs)
"""
