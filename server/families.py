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
CUSTOM = ("qwen3-embedding", "qwen3-reranker", "embeddinggemma")


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


def _wrappers():
    import torch

    class Qwen3Hidden(torch.nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone

        def forward(self, input_ids, attention_mask):
            full, _ = _masks(attention_mask, causal=True)
            out = self.backbone(input_ids=input_ids, attention_mask={"full_attention": full},
                                position_ids=_positions(attention_mask), use_cache=False)
            return out.last_hidden_state

    class Qwen3YesNo(torch.nn.Module):
        def __init__(self, lm, yes: int, no: int):
            super().__init__()
            self.backbone = lm.model
            w = lm.lm_head.weight.detach()
            self.register_buffer("direction", (w[yes] - w[no]).clone().unsqueeze(1))  # [H, 1]

        def forward(self, input_ids, attention_mask):
            full, _ = _masks(attention_mask, causal=True)
            h = self.backbone(input_ids=input_ids, attention_mask={"full_attention": full},
                              position_ids=_positions(attention_mask), use_cache=False).last_hidden_state
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

    return Qwen3Hidden, Qwen3YesNo, GemmaEmbedding


def export(src: Path, out_dir: Path, family: str, dense_paths: list[str]) -> dict:
    """Write `out_dir/model.onnx` for a custom family; return the manifest fields it implies."""
    import torch
    from tokenizers import Tokenizer

    Qwen3Hidden, Qwen3YesNo, GemmaEmbedding = _wrappers()
    fields: dict = {"family": family}
    if family == "qwen3-embedding":
        from transformers import AutoModel

        model = Qwen3Hidden(AutoModel.from_pretrained(src, attn_implementation="eager", dtype=torch.float32))
        output, shape = "last_hidden_state", {0: "batch", 1: "sequence"}
    elif family == "qwen3-reranker":
        from transformers import AutoModelForCausalLM

        tok = Tokenizer.from_file(str(src / "tokenizer.json"))
        yes, no = tok.token_to_id("yes"), tok.token_to_id("no")
        if yes is None or no is None:
            raise FamilyError(f"{src}: the tokenizer has no single 'yes'/'no' tokens to score with")
        lm = AutoModelForCausalLM.from_pretrained(src, attn_implementation="eager", dtype=torch.float32)
        model = Qwen3YesNo(lm, yes, no)
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
    else:
        raise FamilyError(f"no custom export for family {family!r}")
    model.eval()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        torch.onnx.export(model, (ids, mask), str(out_dir / "model.onnx"), input_names=["input_ids", "attention_mask"],
                          output_names=[output], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                        "attention_mask": {0: "batch", 1: "sequence"}, output: shape})
    fields["output"] = output
    return fields
