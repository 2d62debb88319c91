"""Hugging Face config.json -> ModelSpec for the families in the zoo."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

import yaml

from simulator.schema import ModelSpec
from simulator.errors import MoesimError
from simulator.loading import parse, read_text_file


def _req(cfg: dict, key: str, family: str) -> Any:
    if key not in cfg:
        raise MoesimError(f"config.json {key}", f"missing for a {family} config",
                          "use the model's original config.json")
    return _dim(cfg, key)


def _dim(cfg: dict, key: str, default: Any = None) -> Any:
    """A size from the config: a positive whole number (None or absent gives `default`)."""
    value = cfg.get(key)
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or \
            value != int(value):
        raise MoesimError(f"config.json {key}", f"{value!r} is not a positive whole number",
                          "use the model's original config.json")
    return int(value)


def _mla(cfg: dict, family: str, heads_key: str = "num_attention_heads") -> dict:
    return {"kind": "mla", "num_heads": _req(cfg, heads_key, family),
            "q_lora_rank": cfg.get("q_lora_rank") or 0,
            "kv_lora_rank": _req(cfg, "kv_lora_rank", family),
            "qk_nope_head_dim": _req(cfg, "qk_nope_head_dim", family),
            "qk_rope_head_dim": _req(cfg, "qk_rope_head_dim", family),
            "v_head_dim": _req(cfg, "v_head_dim", family)}


def _gqa(cfg: dict, family: str) -> dict:
    heads = _req(cfg, "num_attention_heads", family)
    return {"kind": "gqa", "num_heads": heads,
            "num_kv_heads": _dim(cfg, "num_key_value_heads", heads),
            "head_dim": _dim(cfg, "head_dim", _req(cfg, "hidden_size", family) // heads)}


def _longcat(cfg: dict) -> dict:
    f = "longcat_flash"
    return {"family": f, "num_layers": _req(cfg, "num_layers", f),
            "hidden_size": _req(cfg, "hidden_size", f), "vocab_size": _req(cfg, "vocab_size", f),
            "layer_kind": "shortcut", "dense_intermediate": _req(cfg, "ffn_hidden_size", f),
            "attention": _mla(cfg, f),
            "moe": {"num_experts": _req(cfg, "n_routed_experts", f),
                    "num_zero_experts": cfg.get("zero_expert_num") or 0,
                    "top_k": _req(cfg, "moe_topk", f),
                    "expert_intermediate": _req(cfg, "expert_ffn_hidden_size", f),
                    "router_scoring": "softmax"},
            "mtp_layers": 1 if cfg.get("num_nextn_predict_layers", 1) else 0}


def _deepseek(cfg: dict) -> dict:
    f = "deepseek_v3"
    return {"family": f, "num_layers": _req(cfg, "num_hidden_layers", f),
            "hidden_size": _req(cfg, "hidden_size", f), "vocab_size": _req(cfg, "vocab_size", f),
            "dense_intermediate": _req(cfg, "intermediate_size", f),
            "first_k_dense": cfg.get("first_k_dense_replace", 0), "attention": _mla(cfg, f),
            "moe": {"num_experts": _req(cfg, "n_routed_experts", f),
                    "top_k": _req(cfg, "num_experts_per_tok", f),
                    "expert_intermediate": _req(cfg, "moe_intermediate_size", f),
                    "num_shared_experts": cfg.get("n_shared_experts") or 0,
                    "router_scoring": cfg.get("scoring_func", "sigmoid")},
            "mtp_layers": cfg.get("num_nextn_predict_layers", 0),
            "tied_embeddings": bool(cfg.get("tie_word_embeddings", False))}


def _qwen3_moe(cfg: dict) -> dict:
    f = "qwen3_moe"
    if cfg.get("mlp_only_layers"):
        raise MoesimError("config.json mlp_only_layers", "a list of dense layers is not "
                          "modelled (only a regular interval, decoder_sparse_step)",
                          "drop mlp_only_layers, or write the model with moe_layer_interval")
    step = cfg.get("decoder_sparse_step", 1)
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        raise MoesimError("config.json decoder_sparse_step", f"{step!r} is not a positive "
                          "integer", "use 1 (every layer MoE) or the interval of MoE layers")
    dense = {"moe_layer_interval": step,
             "dense_intermediate": _req(cfg, "intermediate_size", f)} if step > 1 else {}
    return {"family": f, "num_layers": _req(cfg, "num_hidden_layers", f),
            "hidden_size": _req(cfg, "hidden_size", f), "vocab_size": _req(cfg, "vocab_size", f),
            "attention": _gqa(cfg, f),
            "moe": {"num_experts": _req(cfg, "num_experts", f),
                    "top_k": _req(cfg, "num_experts_per_tok", f),
                    "expert_intermediate": _req(cfg, "moe_intermediate_size", f)},
            "tied_embeddings": bool(cfg.get("tie_word_embeddings", False)), **dense}


def _mixtral(cfg: dict) -> dict:
    f = "mixtral"
    return {"family": f, "num_layers": _req(cfg, "num_hidden_layers", f),
            "hidden_size": _req(cfg, "hidden_size", f), "vocab_size": _req(cfg, "vocab_size", f),
            "attention": _gqa(cfg, f),
            "moe": {"num_experts": _req(cfg, "num_local_experts", f),
                    "top_k": _req(cfg, "num_experts_per_tok", f),
                    "expert_intermediate": _req(cfg, "intermediate_size", f)},
            "tied_embeddings": bool(cfg.get("tie_word_embeddings", False))}


def _llama(cfg: dict) -> dict:
    f = "llama"
    return {"family": f, "num_layers": _req(cfg, "num_hidden_layers", f),
            "hidden_size": _req(cfg, "hidden_size", f), "vocab_size": _req(cfg, "vocab_size", f),
            "dense_intermediate": _req(cfg, "intermediate_size", f), "attention": _gqa(cfg, f),
            "tied_embeddings": bool(cfg.get("tie_word_embeddings", False))}


def _qwen3(cfg: dict) -> dict:
    """Dense Qwen3 (and Qwen2): a Llama-shaped GQA decoder with its own head_dim."""
    return {**_llama(cfg), "family": "qwen3"}


def _gpt_oss(cfg: dict) -> dict:
    """gpt-oss: GQA with sliding-window attention on the layers `layer_types` names (every
    other one), routed SwiGLU experts of width intermediate_size, no shared expert."""
    f = "gpt_oss"
    att = _gqa(cfg, f)
    window = cfg.get("sliding_window") or 0
    types = cfg.get("layer_types")
    if window:
        if not isinstance(types, list) or not types:
            raise MoesimError("config.json layer_types", "missing, so the windowed layers are "
                              "unknown", "use the model's original config.json")
        att["sliding_window"] = _dim(cfg, "sliding_window")
        att["sliding_window_share"] = sum(t == "sliding_attention" for t in types) / len(types)
    return {"family": f, "num_layers": _req(cfg, "num_hidden_layers", f),
            "hidden_size": _req(cfg, "hidden_size", f), "vocab_size": _req(cfg, "vocab_size", f),
            "attention": att,
            "moe": {"num_experts": _req(cfg, "num_local_experts", f),
                    "top_k": _req(cfg, "num_experts_per_tok", f),
                    "expert_intermediate": _req(cfg, "intermediate_size", f)},
            "tied_embeddings": bool(cfg.get("tie_word_embeddings", False))}


FAMILIES: dict[str, Callable[[dict], dict]] = {
    "longcat_flash": _longcat, "deepseek_v3": _deepseek, "qwen3_moe": _qwen3_moe,
    "mixtral": _mixtral, "llama": _llama, "qwen3": _qwen3, "qwen2": _qwen3,
    "gpt_oss": _gpt_oss}

# Families whose configs name an architecture moesim does not model yet: the reason, said
# instead of "not a supported family".
NOT_MODELLED = {
    "glm_moe_dsa": "DeepSeek sparse attention (its lightning indexer and top-k key selection)",
    "deepseek_v32": "DeepSeek sparse attention (its lightning indexer and top-k key selection)",
    "qwen3_5_moe": "hybrid linear attention (Gated DeltaNet layers beside full attention)",
    "qwen3_next": "hybrid linear attention (Gated DeltaNet layers beside full attention)",
}


def import_hf_config(path: Path, name: str | None = None) -> ModelSpec:
    """Read a config.json of a supported family and return its ModelSpec."""
    text = read_text_file(Path(path), "config.json")
    try:
        cfg = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise MoesimError("CONFIG", f"{path} is not valid JSON ({exc})",
                          "pass the model's config.json") from None
    if not isinstance(cfg, dict):
        raise MoesimError("CONFIG", "config.json must hold a JSON object", "pass a config.json")
    family = cfg.get("model_type", "")
    if isinstance(family, str) and family in NOT_MODELLED:
        raise MoesimError("config.json model_type", f"{family}: {NOT_MODELLED[family]} is not "
                          "modelled yet", f"supported: {', '.join(FAMILIES)}")
    if not isinstance(family, str) or family not in FAMILIES:
        raise MoesimError("config.json model_type", f"{family!r} is not a supported family",
                          f"supported: {', '.join(FAMILIES)}")
    data = FAMILIES[family](cfg)
    data["name"] = name or str(cfg.get("_name_or_path") or "") or _name_from_path(path) or family
    try:
        return parse(ModelSpec, data, f"imported {path}")
    except MoesimError as exc:
        raise in_config_words(exc, cfg) from None


# moesim's model keys -> the config.json keys they are read from (the first the config has)
CONFIG_KEYS = {
    "num_kv_heads": ("num_key_value_heads",), "num_heads": ("num_attention_heads",),
    "top_k": ("num_experts_per_tok", "moe_topk"),
    "num_experts": ("num_experts", "n_routed_experts", "num_local_experts"),
    "expert_intermediate": ("moe_intermediate_size",),
    "dense_intermediate": ("intermediate_size",), "num_layers": ("num_hidden_layers",),
    "num_shared_experts": ("n_shared_experts", "num_shared_experts"),
    "head_dim": ("head_dim",), "sliding_window": ("sliding_window",),
}


def in_config_words(exc: MoesimError, cfg: dict) -> MoesimError:
    """The same error with moesim's key names replaced by the config.json keys they came from
    (a user reads the error against their config, not moesim's schema)."""
    def words(text: str) -> str:
        for ours, theirs in CONFIG_KEYS.items():
            key = next((k for k in theirs if k in cfg), None)
            if key is not None and key != ours:
                text = re.sub(rf"\b{ours}\b", f"{key} ({ours})", text)
        return text
    return MoesimError(words(exc.field), words(exc.problem),
                       "correct those keys in the config.json, or pass the model's original one")


def _no_constant(token: str) -> float:
    raise MoesimError("CONFIG", f"the config holds {token}, which is not a number JSON allows",
                      "write a finite number")


def spec_to_yaml(spec: ModelSpec) -> str:
    """A ModelSpec as YAML that `load_model` reads back unchanged."""
    data = spec.model_dump(exclude_defaults=True)
    data.setdefault("name", spec.name)
    return yaml.safe_dump(data, sort_keys=False)


def _name_from_path(path: str) -> str:
    """A model name from its config file's path: 'org--Model_config.json' (a saved hub file)
    gives 'Model'; a plain 'config.json' takes its folder's name."""
    p = Path(path)
    stem = p.stem
    if stem != "config" and stem.endswith("config"):
        return stem[: -len("config")].rstrip("_-.").split("--")[-1]
    return p.parent.name
