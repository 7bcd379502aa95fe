"""Model families whose ONNX graph ember builds itself (export side; needs PyTorch).

Encoders (BERT/MiniLM, XLM-RoBERTa: BGE-M3 and bge-reranker-v2-m3) go through Optimum's exporter
unchanged. Three families need a graph Optimum does not give:

- Qwen3-Embedding: a decoder; the graph is the backbone with masks and positions built in the
  graph from `attention_mask` (causal + padding, positions counted from the first real token, so
  left and right padding give the same numbers); ember pools the last real token.
- Qwen3-Reranker: a causal LM scored by P("yes") against "no" for the next token. The graph
  gathers the last real position's hidden state and multiplies it by only the two lm_head rows:
  its output is one logit, yes − no, and sigmoid(yes − no) is exactly the two-way softmax
  P(yes). No [batch, length, vocabulary] tensor exists anywhere.
- EmbeddingGemma: Gemma3 text with bidirectional attention (full layers see every real token,
  sliding layers every token within the window), mean pooling and the sentence-transformers
  Dense projections, all in the graph; the output is the pooled, projected `sentence_embedding`.

The two Qwen3 graphs are written with plain attention (softmax over a [heads, length, length]
tensor) by default, and with `ember export --optimize` as one com.microsoft GroupQueryAttention
node per layer: ONNX Runtime's fused kernel, which holds no length² tensor (one 8,192-token input
in a third of the memory, 1.8x faster on the CPU; benchmarks/RESULTS.md). That graph reads each
row's length, so it is padded on the right.

What each family needs around the graph (prompts, prompt template, padding side, pooling) is
returned as manifest fields.
"""
from __future__ import annotations

import json
from pathlib import Path

QWEN3_RERANK_TEMPLATE = {
    "prefix": "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
              "Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n",
    "suffix": "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    "body": "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}",
    "instruction": "Given a web search query, retrieve relevant passages that answer the query",
}
CUSTOM = ("qwen3-embedding", "qwen3-reranker", "embeddinggemma", "bge-m3", "splade")
# BGE-M3's heads beside its weights, as FlagEmbedding saves and loads them.
M3_HEADS = ("sparse_linear.pt", "colbert_linear.pt")


class FamilyError(Exception):
    pass


def detect(config: dict, task: str) -> str:
    """The family of a Hugging Face config for an ember task ("" = a plain encoder for Optimum)."""
    model_type = config.get("model_type", "")
    archs = config.get("architectures") or []
    if model_type == "qwen3":
        if task == "embed":
            return "qwen3-embedding"
        if any(a.endswith("ForCausalLM") for a in archs):
            return "qwen3-reranker"
        return ""  # a Qwen3ForSequenceClassification cross-encoder: Optimum's text-classification
    if model_type in ("gemma3_text", "gemma3"):
        if task != "embed":
            raise FamilyError(f"{model_type}: only embedding models (EmbeddingGemma) are supported")
        if not config.get("use_bidirectional_attention"):
            raise FamilyError(f"{model_type}: use_bidirectional_attention is not set; a causal Gemma 3 is a "
                              "language model, not EmbeddingGemma")
        return "embeddinggemma"
    return ""


def detect_files(src: Path, family: str, task: str, st: dict) -> str:
    """Families told apart by their files rather than their config: BGE-M3 (an XLM-R with its
    sparse and ColBERT heads beside it) and SPLADE (sentence-transformers' MLMTransformer +
    SpladePooling)."""
    if st.get("splade"):
        if task != "embed":
            raise FamilyError("a SPLADE model is an embedding model: export it with --task embed")
        return "splade"
    if not family and task == "embed" and all((src / f).is_file() for f in M3_HEADS):
        return "bge-m3"
    return family


def check_dtype(family: str, dtype: str) -> None:
    if family == "embeddinggemma" and dtype == "fp16":
        raise FamilyError("EmbeddingGemma cannot run in float16: its activations overflow fp16's range "
                          "(the model card says the same); export fp32 (or int8 for CPU)")


def _additive(allowed):
    import torch

    return torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)


def _masks(mask, *, causal: bool, window: int = 0):
    """Additive attention masks [B, 1, T, T]: keys must be real tokens; causal; |q − k| < window."""
    import torch

    T = mask.shape[1]
    idx = torch.arange(T, device=mask.device)
    q, k = idx.view(T, 1), idx.view(1, T)
    allowed = mask[:, None, None, :].bool()
    if causal:
        allowed = allowed & (k <= q)
    full = _additive(allowed.expand(-1, 1, T, T))
    if not window:
        return full, None
    return full, _additive((allowed & ((q - k).abs() < window)).expand(-1, 1, T, T))


def _positions(mask):
    """Position of each token counted from the first real one (left padding does not shift them)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _dense_layers(src: Path, dense_paths: list[str]):
    """The sentence-transformers Dense modules after pooling (their directories, in order), as torch modules."""
    import torch
    from safetensors.torch import load_file

    acts = {"torch.nn.modules.linear.Identity": torch.nn.Identity(),
            "torch.nn.modules.activation.Tanh": torch.nn.Tanh()}
    layers = []
    for rel in dense_paths:
        path = src / rel
        cfg = json.loads((path / "config.json").read_text())
        act = cfg.get("activation_function", "torch.nn.modules.linear.Identity")
        if act not in acts:
            raise FamilyError(f"{path}: Dense activation {act} is not supported (Identity, Tanh)")
        weights = path / "model.safetensors"
        state = load_file(str(weights)) if weights.is_file() else torch.load(path / "pytorch_model.bin")
        linear = torch.nn.Linear(cfg["in_features"], cfg["out_features"], bias=cfg.get("bias", True))
        linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
        layers += [linear, acts[act]]
    return torch.nn.Sequential(*layers)


FUSED_DECODERS = ("qwen3-embedding", "qwen3-reranker")
FUSED_ATTENTION = "ember_gqa"  # the transformers attention implementation that exports as GroupQueryAttention


def _fused_attention():
    """Register FUSED_ATTENTION with transformers: causal attention that the ONNX export writes as
    one com.microsoft GroupQueryAttention node per layer (ONNX Runtime's fused kernel: no
    [heads, length, length] tensor, key/value heads shared as the model shares them).

    The node reads the real length of each row from `seqlens_k`, so the tokens must be padded on
    the right: a causal token then never sees a pad, and a pad's own output is never read."""
    import torch
    from transformers import AttentionInterface

    class GQA(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, seqlens_k, total, heads: int, kv_heads: int, scale: float):
            # what the node computes, in torch (the trace needs a value; parity tests use the graph)
            B, S = q.shape[:2]
            q4, k4, v4 = (x.view(B, S, -1, q.shape[-1] // heads).transpose(1, 2) for x in (q, k, v))
            rep = heads // kv_heads
            out = torch.nn.functional.scaled_dot_product_attention(
                q4, k4.repeat_interleave(rep, 1), v4.repeat_interleave(rep, 1), is_causal=True, scale=scale)
            return out.transpose(1, 2).reshape(B, S, -1)

        @staticmethod
        def symbolic(g, q, k, v, seqlens_k, total, heads, kv_heads, scale):
            absent = g.op("prim::Constant")
            absent.setType(torch._C.OptionalType.ofTensor())  # an empty input name: no past key/value
            out, _, _ = g.op("com.microsoft::GroupQueryAttention", q, k, v, absent, absent, seqlens_k, total,
                             num_heads_i=heads, kv_num_heads_i=kv_heads, scale_f=scale, outputs=3)
            return out

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None,
                  **kwargs):
        if sliding_window:
            raise FamilyError("fused attention: sliding-window layers are not supported")
        cfg = module.config  # (not the tensors' shapes: the trace would make those graph values)
        heads, kv_heads, dim = cfg.num_attention_heads, cfg.num_key_value_heads, module.head_dim
        q, k, v = (x.transpose(1, 2).flatten(2) for x in (query, key, value))
        out = GQA.apply(q, k, v, kwargs["ember_seqlens_k"], kwargs["ember_total"], heads, kv_heads,
                        float(scaling if scaling is not None else dim ** -0.5))
        return out.unflatten(2, (heads, dim)), None

    AttentionInterface.register(FUSED_ATTENTION, attention)


def _decoder_kwargs(attention_mask, fused: bool) -> dict:
    """What a Qwen3 backbone is called with: the causal + padding mask (plain attention), or each
    row's real length for GroupQueryAttention (fused; right padding)."""
    import torch

    if not fused:
        full, _ = _masks(attention_mask, causal=True)
        return {"attention_mask": {"full_attention": full}}
    return {"attention_mask": {"full_attention": None},
            # (a row with no real token would be −1, which the node refuses)
            "ember_seqlens_k": (attention_mask.sum(-1) - 1).clamp(min=0).to(torch.int32),
            "ember_total": torch._shape_as_tensor(attention_mask)[1].to(torch.int32)}


def _wrappers():
    import torch

    class Qwen3Hidden(torch.nn.Module):
        def __init__(self, backbone, fused: bool = False):
            super().__init__()
            self.backbone, self.fused = backbone, fused

        def forward(self, input_ids, attention_mask):
            out = self.backbone(input_ids=input_ids, position_ids=_positions(attention_mask), use_cache=False,
                                **_decoder_kwargs(attention_mask, self.fused))
            return out.last_hidden_state

    class Qwen3YesNo(torch.nn.Module):
        def __init__(self, lm, yes: int, no: int, fused: bool = False):
            super().__init__()
            self.backbone, self.fused = lm.model, fused
            w = lm.lm_head.weight.detach()
            self.register_buffer("direction", (w[yes] - w[no]).clone().unsqueeze(1))  # [H, 1]

        def forward(self, input_ids, attention_mask):
            h = self.backbone(input_ids=input_ids, position_ids=_positions(attention_mask), use_cache=False,
                              **_decoder_kwargs(attention_mask, self.fused)).last_hidden_state
            T = attention_mask.shape[1]
            # index of the last real token, whatever the padding side
            last = (attention_mask.to(torch.float32) * torch.arange(1, T + 1, dtype=torch.float32)).argmax(-1)
            h_last = h[torch.arange(h.shape[0]), last]
            return h_last @ self.direction  # [B, 1] = logit(yes) − logit(no)

    class GemmaEmbedding(torch.nn.Module):
        def __init__(self, backbone, dense, window: int):
            super().__init__()
            self.backbone, self.dense, self.window = backbone, dense, window

        def forward(self, input_ids, attention_mask):
            full, sliding = _masks(attention_mask, causal=False, window=self.window)
            masks = {"full_attention": full, "sliding_attention": sliding}
            h = self.backbone(input_ids=input_ids, attention_mask=masks, position_ids=_positions(attention_mask),
                              use_cache=False).last_hidden_state
            m = attention_mask.to(h.dtype).unsqueeze(-1)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return self.dense(pooled)

    class M3(torch.nn.Module):
        """BGE-M3's three outputs from one pass: the hidden states (pooled at [CLS] by the server),
        the per-token lexical weights relu(sparse_linear(h)), and colbert_linear(h) per token."""

        def __init__(self, backbone, sparse, colbert):
            super().__init__()
            self.backbone, self.sparse, self.colbert = backbone, sparse, colbert

        def forward(self, input_ids, attention_mask):
            h = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return h, torch.relu(self.sparse(h)).squeeze(-1), self.colbert(h)

    class Splade(torch.nn.Module):
        """SPLADE: log(1 + relu(MLM logits)) over the real tokens, pooled per vocabulary id (max or
        sum, as SpladePooling): [B, V], never returned as [B, T, V]."""

        def __init__(self, mlm, strategy: str, activation: str, type_ids: bool):
            super().__init__()
            self.mlm, self.strategy, self.twice, self.type_ids = mlm, strategy, activation == "log1p_relu", type_ids

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kw = {"token_type_ids": token_type_ids} if self.type_ids else {}
            logits = self.mlm(input_ids=input_ids, attention_mask=attention_mask, **kw).logits
            w = torch.log1p(torch.relu(logits * attention_mask.unsqueeze(-1).to(logits.dtype)))
            if self.twice:
                w = torch.log1p(w)
            return w.max(dim=1).values if self.strategy == "max" else w.sum(dim=1)

    return Qwen3Hidden, Qwen3YesNo, GemmaEmbedding, M3, Splade


def _special_ids(src: Path, names: tuple[str, ...]) -> tuple[int, ...]:
    """Ids of the tokenizer's special tokens of those names (cls_token, …), as tokenizer_config says."""
    from tokenizers import Tokenizer

    cfg = json.loads((src / "tokenizer_config.json").read_text()) if (src / "tokenizer_config.json").is_file() else {}
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    ids = set()
    for name in names:
        t = cfg.get(name)
        t = t.get("content") if isinstance(t, dict) else t
        if t and tok.token_to_id(t) is not None:
            ids.add(tok.token_to_id(t))
    return tuple(sorted(ids))


def _linear(path: Path, in_features: int):
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    layer = torch.nn.Linear(in_features, state["weight"].shape[0], bias="bias" in state)
    layer.load_state_dict(state)
    return layer


def export(src: Path, out_dir: Path, family: str, dense_paths: list[str], splade: dict | None = None,
           fused: bool = False) -> dict:
    """Write `out_dir/model.onnx` for a custom family; return the manifest fields it implies.
    fused: the decoders' attention as GroupQueryAttention (FUSED_DECODERS only: export_model says so
    to whoever asks for it elsewhere)."""
    import torch
    from tokenizers import Tokenizer

    if fused:
        _fused_attention()
    attn = FUSED_ATTENTION if fused else "eager"
    Qwen3Hidden, Qwen3YesNo, GemmaEmbedding, M3, Splade = _wrappers()
    fields: dict = {"family": family}
    inputs = ["input_ids", "attention_mask"]
    extra: dict = {}  # further graph outputs and their dynamic axes
    if family == "qwen3-embedding":
        from transformers import AutoModel

        model = Qwen3Hidden(AutoModel.from_pretrained(src, attn_implementation=attn, dtype=torch.float32), fused)
        output, shape = "last_hidden_state", {0: "batch", 1: "sequence"}
    elif family == "qwen3-reranker":
        from transformers import AutoModelForCausalLM

        tok = Tokenizer.from_file(str(src / "tokenizer.json"))
        yes, no = tok.token_to_id("yes"), tok.token_to_id("no")
        if yes is None or no is None:
            raise FamilyError(f"{src}: the tokenizer has no single 'yes'/'no' tokens to score with")
        lm = AutoModelForCausalLM.from_pretrained(src, attn_implementation=attn, dtype=torch.float32)
        model = Qwen3YesNo(lm, yes, no, fused)
        output, shape = "logits", {0: "batch"}
        fields.update(rerank_template=dict(QWEN3_RERANK_TEMPLATE), padding_side="left")
    elif family == "embeddinggemma":
        from transformers import AutoModel

        backbone = AutoModel.from_pretrained(src, attn_implementation="eager", dtype=torch.float32)
        dense = _dense_layers(src, dense_paths)
        model = GemmaEmbedding(backbone, dense, int(backbone.config.sliding_window or 0))
        output, shape = "sentence_embedding", {0: "batch"}
        probe = model(torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.long))
        fields.update(pooling="none", dimensions=int(probe.shape[-1]))
    elif family == "bge-m3":
        from transformers import AutoModel

        backbone = AutoModel.from_pretrained(src, attn_implementation="eager", dtype=torch.float32,
                                             add_pooling_layer=False)
        hidden = backbone.config.hidden_size
        model = M3(backbone, _linear(src / M3_HEADS[0], hidden), _linear(src / M3_HEADS[1], hidden))
        output, shape = "last_hidden_state", {0: "batch", 1: "sequence"}
        extra = {"token_weights": {0: "batch", 1: "sequence"}, "colbert_vectors": {0: "batch", 1: "sequence"}}
        # FlagEmbedding drops these from the lexical weights
        fields.update(outputs=("dense", "sparse", "multi_vector"), sparse_output="token_weights", sparse_kind="token",
                      multi_vector_output="colbert_vectors",
                      sparse_skip_ids=_special_ids(src, ("cls_token", "eos_token", "pad_token", "unk_token")))
    elif family == "splade":
        import inspect

        from transformers import AutoModelForMaskedLM

        mlm = AutoModelForMaskedLM.from_pretrained(src, attn_implementation="eager", dtype=torch.float32)
        type_ids = "token_type_ids" in inspect.signature(mlm.forward).parameters and \
            getattr(mlm.config, "type_vocab_size", 0) > 0
        cfg = splade or {}
        model = Splade(mlm, cfg.get("pooling_strategy", "max"), cfg.get("activation_function", "relu"), type_ids)
        if type_ids:
            inputs.append("token_type_ids")
        output, shape = "vocab_weights", {0: "batch"}
        fields.update(outputs=("sparse",), sparse_output=output, sparse_kind="vocab", pooling="none",
                      dimensions=int(mlm.config.vocab_size), normalize=False)
    else:
        raise FamilyError(f"no custom export for family {family!r}")
    if fused:
        fields["padding_side"] = "right"  # GroupQueryAttention reads each row's length from the left
    model.eval()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    args = (ids, mask, torch.zeros_like(ids)) if len(inputs) == 3 else (ids, mask)
    names = [output, *extra]
    axes = {name: {0: "batch", 1: "sequence"} for name in inputs} | {output: shape} | extra
    with torch.no_grad():
        torch.onnx.export(model, args, str(out_dir / "model.onnx"), input_names=inputs, output_names=names,
                          opset_version=17, dynamo=False, dynamic_axes=axes,
                          custom_opsets={"com.microsoft": 1} if fused else None)
    fields["output"] = output
    return fields
