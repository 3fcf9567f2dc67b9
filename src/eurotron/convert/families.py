"""Per-family mapping between eurotron's model and transformers' Llama, Mistral and Apertus.

One table per family says which eurotron parameter is which Hugging Face tensor; shapes come from the
model config alone, so every tensor is checked against them before a byte is written. The mapping is
1:1 with no reshaping:

* **no q/k permutation**: eurotron's RoPE is Hugging Face's rotate-half convention on the same weight
  layout (see ``model/rope.py``), so ``wq``/``wk`` are ``q_proj``/``k_proj`` verbatim;
* **GQA**: ``wk``/``wv`` hold ``num_kv_heads * head_dim`` rows, exactly like ``k_proj``/``v_proj``;
* **no fused projections**: q, k, v and gate/up are separate tensors on both sides;
* **norm eps, RoPE theta and scaling** travel through ``config.json`` (both the transformers-5
  ``rope_parameters`` and the legacy ``rope_theta``/``rope_scaling`` keys are written, so older
  readers such as vLLM or llama.cpp's converter see the same values);
* **tied embeddings**: the checkpoint holds ``output.weight`` (the same tensor as the embedding);
  the HF side stores only ``embed_tokens`` and sets ``tie_word_embeddings``;
* **Apertus xIELU**: ``act.alpha_p``/``act.alpha_n`` are ``act_fn.alpha_p``/``act_fn.alpha_n`` (the
  raw, pre-softplus scalars on both sides); ``act_fn.beta``/``act_fn.eps`` are constants in eurotron,
  written as buffers on export and checked on import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..config import ModelConfig, RopeScalingConfig
from ..model.activations import XIELU
from .errors import ConvertError
from .hf_metadata import TOKEN_KEYS, metadata_from_hf, special_token_ids

Shape = Tuple[int, ...]

# eurotron suffix under ``layers.<i>.`` -> Hugging Face suffix under ``model.layers.<i>.``, in the order
# transformers' state dict lists them.
_ATTENTION = (
    ("attention.wq.weight", "self_attn.q_proj.weight"),
    ("attention.wk.weight", "self_attn.k_proj.weight"),
    ("attention.wv.weight", "self_attn.v_proj.weight"),
    ("attention.wo.weight", "self_attn.o_proj.weight"),
)
_LLAMA_LAYER = _ATTENTION + (
    ("feed_forward.w1.weight", "mlp.gate_proj.weight"),
    ("feed_forward.w3.weight", "mlp.up_proj.weight"),
    ("feed_forward.w2.weight", "mlp.down_proj.weight"),
    ("attention_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
)
_APERTUS_LAYER = _ATTENTION + (
    ("attention.q_norm.weight", "self_attn.q_norm.weight"),
    ("attention.k_norm.weight", "self_attn.k_norm.weight"),
    ("feed_forward.w1.weight", "mlp.up_proj.weight"),
    ("feed_forward.w2.weight", "mlp.down_proj.weight"),
    ("feed_forward.act.alpha_p", "mlp.act_fn.alpha_p"),
    ("feed_forward.act.alpha_n", "mlp.act_fn.alpha_n"),
    ("attention_norm.weight", "attention_layernorm.weight"),
    ("ffn_norm.weight", "feedforward_layernorm.weight"),
)
_XIELU_DEFAULTS = XIELU()
# Buffers of transformers' XIELUActivation that eurotron keeps as fixed constants.
_APERTUS_CONSTANTS = (("mlp.act_fn.beta", _XIELU_DEFAULTS.beta), ("mlp.act_fn.eps", _XIELU_DEFAULTS.eps))
# Tensors some Hub checkpoints still carry that transformers recomputes (never weights).
IGNORED_HF_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class Family:
    name: str  # eurotron's model.family
    architecture: str  # config.json "architectures"[0]
    model_type: str
    hidden_act: str
    mlp: str
    qk_norm: bool
    layer_map: Tuple[Tuple[str, str], ...]
    constants: Tuple[Tuple[str, float], ...] = ()
    # Defaults transformers uses when config.json leaves RoPE out.
    default_rope: Dict[str, Any] = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 10000.0})
    default_norm_eps: float = 1e-6
    extra_config: Dict[str, Any] = field(default_factory=dict)


FAMILIES: Dict[str, Family] = {
    "llama": Family(
        "llama", "LlamaForCausalLM", "llama", "silu", "swiglu", False, _LLAMA_LAYER,
        extra_config={"mlp_bias": False, "pretraining_tp": 1},
    ),
    # sliding_window: written from model.sliding_window (None when 0); see hf_config_dict.
    "mistral": Family(
        "mistral", "MistralForCausalLM", "mistral", "silu", "swiglu", False, _LLAMA_LAYER,
        extra_config={"sliding_window": None},
    ),
    "apertus": Family(
        "apertus", "ApertusForCausalLM", "apertus", "xielu", "xielu", True, _APERTUS_LAYER, _APERTUS_CONSTANTS,
        default_rope={"rope_type": "llama3", "rope_theta": 12000000.0, "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        default_norm_eps=1e-5,
    ),
}
_BY_ARCHITECTURE = {f.architecture: f for f in FAMILIES.values()}
_BY_MODEL_TYPE = {f.model_type: f for f in FAMILIES.values()}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the eurotron checkpoint (``ours``, without the ``model.`` prefix) and its HF twin.

    ``tied`` marks ``output.weight`` of a model with tied embeddings: it is the embedding itself, so it
    is not written to the HF side and is read back from ``model.embed_tokens.weight``.
    """

    ours: str
    hf: str
    shape: Shape
    tied: bool = False


def family_for_config(cfg: ModelConfig) -> Family:
    """The family of a eurotron model config, after checking transformers' class can express it."""
    family = FAMILIES.get(cfg.family)
    if family is None:
        raise ConvertError(
            f"model.family={cfg.family!r} has no Hugging Face mapping; supported: {', '.join(FAMILIES)}"
        )
    if cfg.mlp != family.mlp:
        raise ConvertError(
            f"model.mlp={cfg.mlp!r} cannot be expressed by {family.architecture}, which uses {family.mlp!r}; "
            f"use family={'apertus' if cfg.mlp == 'xielu' else 'llama'} for a {cfg.mlp} MLP"
        )
    if cfg.qk_norm != family.qk_norm:
        raise ConvertError(
            f"model.qk_norm={cfg.qk_norm} cannot be expressed by {family.architecture} "
            f"({'always has' if family.qk_norm else 'has no'} QK-norm)"
        )
    if cfg.sliding_window > 0 and family.name != "mistral":
        raise ConvertError(
            f"model.sliding_window={cfg.sliding_window} cannot be expressed by {family.architecture} (no "
            f"sliding-window attention); use family=mistral or model.sliding_window=0"
        )
    return family


def family_for_hf_config(hf: Dict[str, Any]) -> Family:
    architectures = hf.get("architectures") or []
    for arch in architectures:
        if arch in _BY_ARCHITECTURE:
            return _BY_ARCHITECTURE[arch]
    if not architectures and hf.get("model_type") in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[hf["model_type"]]
    found = ", ".join(architectures) or f"model_type={hf.get('model_type')!r}"
    supported = ", ".join(sorted(_BY_ARCHITECTURE))
    raise ConvertError(f"unsupported architecture {found}; eurotron converts {supported}")


def tensor_specs(cfg: ModelConfig) -> List[TensorSpec]:
    """Every tensor of a eurotron checkpoint of this config with its HF name and shape, in HF order."""
    family = family_for_config(cfg)
    dim, head_dim, ffn = cfg.hidden_size, cfg.resolved_head_dim, cfg.ffn_hidden_size
    q_rows, kv_rows = cfg.num_heads * head_dim, cfg.num_kv_heads * head_dim
    shapes: Dict[str, Shape] = {
        "attention.wq.weight": (q_rows, dim),
        "attention.wk.weight": (kv_rows, dim),
        "attention.wv.weight": (kv_rows, dim),
        "attention.wo.weight": (dim, q_rows),
        "attention.q_norm.weight": (head_dim,),
        "attention.k_norm.weight": (head_dim,),
        "feed_forward.w1.weight": (ffn, dim),
        "feed_forward.w3.weight": (ffn, dim),
        "feed_forward.w2.weight": (dim, ffn),
        "feed_forward.act.alpha_p": (1,),
        "feed_forward.act.alpha_n": (1,),
        "attention_norm.weight": (dim,),
        "ffn_norm.weight": (dim,),
    }
    specs = [TensorSpec("tok_embeddings.weight", "model.embed_tokens.weight", (cfg.vocab_size, dim))]
    for i in range(cfg.num_layers):
        for ours, hf in family.layer_map:
            specs.append(TensorSpec(f"layers.{i}.{ours}", f"model.layers.{i}.{hf}", shapes[ours]))
    specs.append(TensorSpec("norm.weight", "model.norm.weight", (dim,)))
    if cfg.tie_embeddings:
        specs.append(TensorSpec("output.weight", "model.embed_tokens.weight", (cfg.vocab_size, dim), tied=True))
    else:
        specs.append(TensorSpec("output.weight", "lm_head.weight", (cfg.vocab_size, dim)))
    return specs


def hf_constants(cfg: ModelConfig) -> List[Tuple[str, float]]:
    """HF buffers that are constants in eurotron (Apertus' xIELU beta and eps), per layer."""
    family = family_for_config(cfg)
    return [(f"model.layers.{i}.{suffix}", value) for i in range(cfg.num_layers) for suffix, value in family.constants]


# ------------------------------------------------------------------------------------ config.json
def _rope_dicts(cfg: ModelConfig) -> Tuple[Optional[Dict[str, Any]], Dict[str, Any]]:
    """(legacy ``rope_scaling``, transformers-5 ``rope_parameters``) for the config."""
    if cfg.rope_scaling.type == "none":
        return None, {"rope_type": "default", "rope_theta": cfg.rope_theta}
    s = cfg.rope_scaling
    scaling = {
        "rope_type": "llama3",
        "factor": s.factor,
        "low_freq_factor": s.low_freq_factor,
        "high_freq_factor": s.high_freq_factor,
        "original_max_position_embeddings": s.original_max_position_embeddings,
    }
    return scaling, {**scaling, "rope_theta": cfg.rope_theta}


def hf_config_dict(cfg: ModelConfig, dtype_name: str, token_ids: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``config.json`` for transformers' class of this family (readable by transformers 4.45+ and 5).

    ``token_ids``: the three special ids as ``hf_metadata.special_token_ids`` resolves them (default:
    ``model.hf``'s alone)."""
    family = family_for_config(cfg)
    ids = token_ids if token_ids is not None else special_token_ids(cfg.hf, None)[0]
    rope_scaling, rope_parameters = _rope_dicts(cfg)

    config: Dict[str, Any] = {
        "architectures": [family.architecture],
        "model_type": family.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.ffn_hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.resolved_head_dim,
        "hidden_act": family.hidden_act,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling,
        "rope_parameters": rope_parameters,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": cfg.init_std,
        "use_cache": True,
        **{key: ids.get(key) for key in TOKEN_KEYS},
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
    }
    config.update(family.extra_config)
    if family.name == "mistral":
        config["sliding_window"] = cfg.sliding_window or None
    return config


def _rope_from_hf(hf: Dict[str, Any], family: Family) -> Tuple[float, RopeScalingConfig]:
    params = hf.get("rope_parameters")
    if params is None:
        params = dict(hf.get("rope_scaling") or {})
        if "rope_theta" in hf:
            params.setdefault("rope_theta", hf["rope_theta"])
    if not params:
        params = dict(family.default_rope)
    if any(isinstance(v, dict) for v in params.values()):
        raise ConvertError(f"per-layer-type rope_parameters are not supported: {params}")
    kind = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", hf.get("rope_theta", family.default_rope["rope_theta"])))
    if float(params.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ConvertError(f"partial_rotary_factor={params['partial_rotary_factor']} is not supported (eurotron rotates whole heads)")
    if kind == "default":
        return theta, RopeScalingConfig(type="none")
    if kind != "llama3":
        raise ConvertError(
            f"RoPE scaling type {kind!r} is not supported; eurotron models 'default' and 'llama3' scaling"
        )
    try:
        return theta, RopeScalingConfig(
            type="llama3",
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
    except KeyError as err:
        raise ConvertError(f"llama3 RoPE scaling without {err.args[0]} in config.json: {params}") from None


def _sliding_window_from_hf(hf: Dict[str, Any], family: Family) -> int:
    """Mistral's ``sliding_window`` (null: full attention) as ``model.sliding_window`` (0: off). Kept as
    published even when it is not below max_position_embeddings, so it is written back unchanged."""
    value = hf.get("sliding_window")
    if value is None or family.name != "mistral":
        return 0  # Llama and Apertus configs have no window (transformers ignores the key there)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConvertError(f"config.json: sliding_window={value!r} must be a positive integer or null")
    return value


def model_config_from_hf(hf: Dict[str, Any], name: str) -> Tuple[ModelConfig, Family, List[str]]:
    """eurotron's ModelConfig for an HF ``config.json`` (plus the family and any warnings).

    Refuses features the eurotron model does not have (biases, other activations or RoPE types) instead
    of silently dropping them.
    """
    family = family_for_hf_config(hf)
    warnings: List[str] = []
    act = hf.get("hidden_act", family.hidden_act)
    if act != family.hidden_act:
        raise ConvertError(f"hidden_act={act!r} is not supported for {family.architecture}; expected {family.hidden_act!r}")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise ConvertError(f"{key}=true is not supported: eurotron's linear layers have no bias")
    max_pos = int(hf.get("max_position_embeddings", 2048))
    sliding = _sliding_window_from_hf(hf, family)
    heads = int(hf["num_attention_heads"])
    theta, scaling = _rope_from_hf(hf, family)
    try:
        cfg = ModelConfig(
            name=name,
            family=family.name,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(hf["head_dim"]) if hf.get("head_dim") else None,
            ffn_hidden_size=int(hf["intermediate_size"]),
            mlp=family.mlp,
            qk_norm=family.qk_norm,
            norm_eps=float(hf.get("rms_norm_eps", family.default_norm_eps)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_seq_len=max_pos,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            init_std=float(hf.get("initializer_range", 0.02)),
            sliding_window=sliding,
            hf=metadata_from_hf(hf, None, None, "config.json"),
        )
    except KeyError as err:
        raise ConvertError(f"config.json has no {err.args[0]!r}, which {family.architecture} needs") from None
    if cfg.head_dim == cfg.hidden_size // cfg.num_heads and cfg.hidden_size % cfg.num_heads == 0:
        cfg.head_dim = None  # the default; keeps the written model config minimal
    return cfg, family, warnings
