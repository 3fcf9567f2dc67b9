"""The throughput model (plan/throughput.py) against published training runs, and its parts.

Each published run is written as eurotron config overrides that reproduce its model shape, layout,
batch, recompute and hardware as its source states them; where a source leaves a value out, the
assumption is named next to it. Every prediction must be within ±20% of the published figure.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Dict, List, Tuple

import pytest

from eurotron.compose import compose_train
from eurotron.plan.layout import step_micro_batches
from eurotron.plan.throughput import PlanError, bubble_fraction, predict_step

# Grand Teton hosts of torchtitan's benchmark: 8 H100 (HBM2e, 500 W power limit: "peak between SXM and
# NVL", so NVL's 835 TFLOP/s), NVLink all pairs, 400 Gb/s RDMA per GPU.
TORCHTITAN_HOST = ["cluster=generic", "cluster.gpu_model=H100 SXM", "cluster.peak_flops=8.35e14",
                   "cluster.gpus_per_node=8", "cluster.interconnect.intra_node_gb_s=360",
                   "cluster.interconnect.inter_node_gb_s=45"]
DGX_H100 = ["cluster=generic", "cluster.gpu_model=H100 SXM", "cluster.peak_flops=9.89e14", "cluster.gpus_per_node=8",
            "cluster.interconnect.intra_node_gb_s=360", "cluster.interconnect.inter_node_gb_s=45"]


def layout(tp: int, pp: int, dp_shard: int, dp_replicate: int = 1, v: int = 1, schedule: str = "1f1b",
           ac: str = "none", compile: bool = True) -> List[str]:
    return [f"parallel.tp={tp}", f"parallel.pp={pp}", f"parallel.dp_shard={dp_shard}",
            f"parallel.dp_replicate={dp_replicate}", f"parallel.pp_virtual_stages={v}", f"parallel.pp_schedule={schedule}",
            f"parallel.activation_checkpoint={ac}", f"parallel.sequence_parallel={str(tp > 1).lower()}",
            f"parallel.compile={str(compile).lower()}", "parallel.activation_checkpoint_every=2"]


def batch(seq: int, global_batch: int, micro: int) -> List[str]:
    return [f"data.seq_len={seq}", f"data.global_batch_size={global_batch}", f"data.micro_batch_size={micro}"]


# name -> (overrides, ("tokens_per_s_per_gpu" | "mfu", published value), source)
PUBLISHED: Dict[str, Tuple[List[str], Tuple[str, float], str]] = {
    # Table 1: FSDP8, local batch 2, global 16, seq 8192, selective AC. torchtitan's "op" selective AC
    # recomputes every second matmul: the FLOPs of eurotron's block-level selective, every 2nd block.
    "torchtitan_llama3.1_8b_fsdp8": (
        ["model=llama3_1_8b", *TORCHTITAN_HOST, *layout(1, 1, 8, ac="selective", compile=False), *batch(8192, 16, 2)],
        ("tokens_per_s_per_gpu", 5762), "pytorch/torchtitan benchmarks/llama3_h100_202412_torchtitan.md"),
    "torchtitan_llama3.1_8b_fsdp8_compiled": (
        ["model=llama3_1_8b", *TORCHTITAN_HOST, *layout(1, 1, 8, ac="selective"), *batch(8192, 16, 2)],
        ("tokens_per_s_per_gpu", 6667), "pytorch/torchtitan benchmarks/llama3_h100_202412_torchtitan.md"),
    # 768 H100, TP8 PP2 DP48, seq 4096, vocab 131,072, Llama-3-70B shape; Megatron's fused kernels count as
    # compiled, no recompute. Assumed: global batch 1536 (32 micro-batches of 1 per DP rank).
    "megatron_core_70b_768xh100": (
        ["model=llama3_70b", "model.vocab_size=131072", *DGX_H100, *layout(8, 2, 1, 48), *batch(4096, 1536, 1)],
        ("mfu", 0.42), "NVIDIA/Megatron-LM README model table"),
    # 4,096 GH200 on Alps, TP4 PP8 with 2 virtual stages (5 layers each), SP, seq 4096. Assumed: global
    # batch 2048 sequences, micro-batch 1, no recompute.
    "apertus_70b_4096xgh200": (
        ["model=apertus_70b", "cluster=alps", *layout(4, 8, 1, 128, v=2, schedule="interleaved_1f1b"),
         *batch(4096, 2048, 1)],
        ("tokens_per_s_per_gpu", 723), "Apertus tech report, arXiv 2509.14233"),
    # One JUPITER node: "baby-9B" (36 layers, hidden 4096, ffn 12288, 32/8 heads, QK-norm, ~50k vocab),
    # TP1 DP4, micro-batch 1, global 16, seq 4096 (1.96 s/step), no recompute, Megatron.
    "oellm_9b_jupiter_node": (
        ["model=llama3_8b", "model.num_layers=36", "model.ffn_hidden_size=12288", "model.vocab_size=50304",
         "model.qk_norm=true", "cluster=jupiter", *layout(1, 1, 1, 4), *batch(4096, 16, 1)],
        ("tokens_per_s_per_gpu", 8383),
        "OpenEuroLLM/oellm-autoexp config/experiments/megatron_jupiter_speed/README.md"),
}


def predicted(overrides: List[str]):
    cfg, _ = compose_train(["experiment=demo", *overrides])
    par = cfg.parallel
    return predict_step(cfg.model, par, cfg.data, cfg.cluster, step_micro_batches(cfg), par.pp_virtual_stages)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_prediction_is_within_20_percent_of_the_published_run(name):
    overrides, (metric, published), source = PUBLISHED[name]
    step = predicted(overrides)
    got = getattr(step, metric)
    error = got / published - 1
    print(f"\n{name}: predicted {metric} {got:.4g}, published {published:.4g} ({source}): {error:+.1%}")
    assert abs(error) <= 0.20, (name, got, published)


def test_parts_of_the_step_follow_the_layout():
    base = ["model=llama3_70b", *DGX_H100, *batch(4096, 512, 1)]
    tp8 = predicted([*base, *layout(8, 1, 8)])
    tp8_across_nodes = predicted([*base, "cluster.gpus_per_node=4", *layout(8, 1, 8)])
    assert tp8.tp_comm_s > 0 and tp8_across_nodes.tp_comm_s > 5 * tp8.tp_comm_s  # NVLink vs the NICs
    one_f_one_b = predicted([*base, *layout(8, 4, 2)])
    interleaved = predicted([*base, *layout(8, 4, 2, v=2, schedule="interleaved_1f1b")])
    assert interleaved.pp_bubble_s < 0.6 * one_f_one_b.pp_bubble_s
    none, full = predicted([*base, *layout(8, 4, 2)]), predicted([*base, *layout(8, 4, 2, ac="full")])
    assert 1.25 < full.compute_s / none.compute_s < 1.34  # +1 forward of the blocks (a third of their FLOPs)
    eager = predicted([*base, *layout(8, 4, 2, compile=False)])
    assert eager.compute_s > none.compute_s and eager.mfu < none.mfu
    assert none.mfu == pytest.approx(none.tokens_per_s_per_gpu * none.model_flops_per_token / 9.89e14)


def test_bubble_fractions():
    assert bubble_fraction("1f1b", 1, 1, 8) == 0
    assert bubble_fraction("1f1b", 4, 1, 32) == pytest.approx(3 / 35)
    assert bubble_fraction("gpipe", 4, 1, 32) == pytest.approx(3 / 35)
    assert bubble_fraction("interleaved_1f1b", 4, 2, 32) == pytest.approx(3 / 67)
    assert bubble_fraction("zbv_zero_bubble", 4, 2, 32) < bubble_fraction("interleaved_1f1b", 4, 2, 32)


def test_unknown_bandwidth_or_gpu_is_a_clear_error():
    with pytest.raises(PlanError, match=r"cluster.interconnect.intra_node_gb_s=0.0: unknown for cluster 'generic'"):
        predicted(["model=llama3_8b", "cluster=generic", "cluster.gpu_model=H100", *layout(4, 1, 1), *batch(4096, 8, 1)])
    with pytest.raises(PlanError, match=r"cluster.gpu_model='GPU': not a GPU the planner knows"):
        predicted(["model=llama3_8b", "cluster=generic", *layout(1, 1, 8), *batch(4096, 8, 1)])


def test_the_planner_modules_do_not_import_torch():
    code = ("import sys; import eurotron.plan.throughput, eurotron.plan.flops; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    subprocess.run([sys.executable, "-c", code], check=True)
