"""Tiny random-weight models of the families ember serves, built the way the real ones are laid out.

Each builder writes a Hugging Face model directory (config, weights, tokenizer.json,
tokenizer_config.json) and, where the real family has them, the sentence-transformers files
(modules.json, pooling, Dense modules, prompts, max_seq_length), so `ember export` reads the same
files it reads from the real checkpoint. Tokenizers are trained here on a few sentences (byte-level
BPE for Qwen3, Unigram/SentencePiece-style for XLM-R and Gemma) with the family's special tokens
and post-processing (Qwen3-Embedding appends <|endoftext|>; XLM-R wraps in <s> … </s>; Gemma
starts with <bos> and ends with <eos>).
"""
from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "A man is playing a guitar on the stage.", "The cat sat quietly on the warm window sill.",
    "Stock markets fell sharply after the announcement.", "How do I bake bread without yeast?",
    "The quick brown fox jumps over the lazy dog.", "Photosynthesis converts light into chemical energy.",
    "Is it going to rain in Paris tomorrow?", "She answered yes, then no, then yes again.",
    "Élan, naïve café — déjà vu 東京 😀 مرحبا", "Rust and Python are both popular languages.",
]
QWEN3_QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
GEMMA_PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: ",
                 "Retrieval-query": "task: search result | query: ", "Retrieval-document": "title: none | text: ",
                 "STS": "task: sentence similarity | query: "}


def _corpus(n: int = 40) -> list[str]:
    return CORPUS * n + ["yes", "no"] * 50


def _bpe_tokenizer(specials: list[str], vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    return tok


def _unigram_tokenizer(specials: list[str], vocab_size: int = 300):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token=specials[-1])
    tok.train_from_iterator(_corpus(), trainer)
    return tok


def _write_tokenizer(dst: Path, tok, config: dict) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    tok.save(str(dst / "tokenizer.json"))
    (dst / "tokenizer_config.json").write_text(json.dumps(config))


def qwen3_tokenizer(dst: Path, *, eos_suffix: bool):
    from tokenizers import processors

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = _bpe_tokenizer(specials)
    if eos_suffix:  # Qwen3-Embedding's tokenizer appends <|endoftext|>: the last token is what is pooled
        eot = tok.token_to_id("<|endoftext|>")
        tok.post_processor = processors.TemplateProcessing(
            single="$A <|endoftext|>", pair="$A <|endoftext|> $B <|endoftext|>",
            special_tokens=[("<|endoftext|>", eot)])
    _write_tokenizer(dst, tok, {
        "tokenizer_class": "Qwen2Tokenizer", "pad_token": "<|endoftext|>", "eos_token": "<|im_end|>",
        "padding_side": "left", "model_max_length": 131072, "add_prefix_space": False,
    })
    return tok


def _qwen3_config(tok, **kw):
    """A tiny Qwen3 config; keyword arguments override it (a real size: benchmarks/real_size.py)."""
    from transformers import Qwen3Config

    return Qwen3Config(**{**dict(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                 max_position_embeddings=32768, pad_token_id=tok.token_to_id("<|endoftext|>"),
                                 tie_word_embeddings=True), **kw})


def _save_sentence_transformer(dst: Path, modules: list, prompts: dict, max_seq_length: int) -> None:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(modules=modules, prompts=prompts, device="cpu")
    st.max_seq_length = max_seq_length
    st.save(str(dst))


def build_qwen3_embedding(dst: Path, **config) -> Path:
    """Qwen3-Embedding layout: Qwen3Model, left padding, last-token pooling, normalize, query instruction."""
    import torch
    from sentence_transformers import models as st_models
    from transformers import Qwen3Model

    raw = dst.parent / (dst.name + "-hf")
    tok = qwen3_tokenizer(raw, eos_suffix=True)
    torch.manual_seed(3)
    cfg = _qwen3_config(tok, **config)
    Qwen3Model(cfg).eval().save_pretrained(raw)
    tr = st_models.Transformer(str(raw), max_seq_length=8192, tokenizer_args={"padding_side": "left"})
    pooling = st_models.Pooling(cfg.hidden_size, pooling_mode="lasttoken")
    _save_sentence_transformer(dst, [tr, pooling, st_models.Normalize()],
                               {"query": QWEN3_QUERY_PROMPT, "document": ""}, 8192)
    return dst


def build_qwen3_reranker(dst: Path, **config) -> Path:
    """Qwen3-Reranker layout: a Qwen3ForCausalLM whose 'yes'/'no' next-token logits are the score."""
    import torch
    from transformers import Qwen3ForCausalLM

    tok = qwen3_tokenizer(dst, eos_suffix=False)
    assert tok.token_to_id("yes") is not None and tok.token_to_id("no") is not None
    torch.manual_seed(4)
    Qwen3ForCausalLM(_qwen3_config(tok, **config)).eval().save_pretrained(dst)
    return dst


def xlmr_tokenizer(dst: Path):
    from tokenizers import processors

    specials = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3, as in XLM-R
    tok = _unigram_tokenizer(specials)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)])
    _write_tokenizer(dst, tok, {
        "tokenizer_class": "XLMRobertaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
        "cls_token": "<s>", "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<unk>",
        "model_max_length": 8192,
    })
    return tok


def _xlmr_config(tok, **kw):
    """A tiny XLM-R config; keyword arguments override it."""
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(**{**dict(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=8194,
                                      pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1), **kw})


def build_bge_m3(dst: Path, *, heads: bool = True, **config) -> Path:
    """BGE-M3 layout: XLM-RoBERTa, CLS pooling, normalize, 8192 tokens (sentence-transformers
    files), and beside the weights its two heads as FlagEmbedding saves them: sparse_linear.pt
    (hidden → 1, the lexical weights) and colbert_linear.pt (hidden → hidden, the ColBERT vectors)."""
    import torch
    from sentence_transformers import models as st_models
    from transformers import XLMRobertaModel

    raw = dst.parent / (dst.name + "-hf")
    tok = xlmr_tokenizer(raw)
    torch.manual_seed(5)
    cfg = _xlmr_config(tok, **config)
    XLMRobertaModel(cfg, add_pooling_layer=False).eval().save_pretrained(raw)
    tr = st_models.Transformer(str(raw), max_seq_length=8192)
    h = cfg.hidden_size
    _save_sentence_transformer(dst, [tr, st_models.Pooling(h, pooling_mode="cls"), st_models.Normalize()], {}, 8192)
    if heads:
        torch.save(torch.nn.Linear(h, 1).state_dict(), dst / "sparse_linear.pt")
        torch.save(torch.nn.Linear(h, h).state_dict(), dst / "colbert_linear.pt")
    return dst


def build_splade(dst: Path, bert_config, copy_tokenizer) -> Path:
    """A SPLADE model as sentence-transformers' SparseEncoder saves one: a BERT masked LM
    (MLMTransformer) and SpladePooling (max of log(1 + relu(logits)) over the tokens)."""
    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder import models as sparse_models
    from transformers import BertForMaskedLM

    raw = dst.parent / (dst.name + "-hf")
    raw.mkdir(parents=True)
    torch.manual_seed(8)
    BertForMaskedLM(bert_config).eval().save_pretrained(raw)
    copy_tokenizer(raw)
    mlm = sparse_models.MLMTransformer(str(raw), max_seq_length=128)
    SparseEncoder(modules=[mlm, sparse_models.SpladePooling("max")], device="cpu").save(str(dst))
    return dst


def build_bge_reranker(dst: Path, **config) -> Path:
    """bge-reranker-v2-m3 layout: XLMRobertaForSequenceClassification with one label."""
    import torch
    from transformers import XLMRobertaForSequenceClassification

    tok = xlmr_tokenizer(dst)
    torch.manual_seed(6)
    XLMRobertaForSequenceClassification(_xlmr_config(tok, num_labels=1, **config)).eval().save_pretrained(dst)
    return dst


def build_embeddinggemma(dst: Path, *, sliding_window: int = 16, dense: int = 96, **config) -> Path:
    """EmbeddingGemma layout: Gemma3 text with bidirectional attention (sliding-window layers too),
    mean pooling, two Dense projections, normalize, the task prompts, Matryoshka-trained sizes."""
    import torch
    from sentence_transformers import models as st_models
    from tokenizers import processors
    from transformers import Gemma3TextConfig, Gemma3TextModel

    raw = dst.parent / (dst.name + "-hf")
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0..3, as in Gemma
    tok = _unigram_tokenizer(specials)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", pair="<bos> $A <eos> $B <eos>",
        special_tokens=[("<bos>", tok.token_to_id("<bos>")), ("<eos>", tok.token_to_id("<eos>"))])
    _write_tokenizer(raw, tok, {"tokenizer_class": "GemmaTokenizer", "pad_token": "<pad>", "bos_token": "<bos>",
                                "eos_token": "<eos>", "unk_token": "<unk>", "padding_side": "right",
                                "model_max_length": 2048})
    cfg = Gemma3TextConfig(**{**dict(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=1, head_dim=8, max_position_embeddings=2048,
        sliding_window=sliding_window, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        use_bidirectional_attention=True, pad_token_id=0, eos_token_id=1, bos_token_id=2,
        query_pre_attn_scalar=8, rope_scaling=None), **config})
    cfg.architectures = ["Gemma3TextModel"]
    torch.manual_seed(7)
    Gemma3TextModel(cfg).eval().save_pretrained(raw)
    tr = st_models.Transformer(str(raw), max_seq_length=2048)
    h = cfg.hidden_size
    modules = [tr, st_models.Pooling(h, pooling_mode="mean"),
               st_models.Dense(h, dense, bias=False, activation_function=torch.nn.Identity()),
               st_models.Dense(dense, h, bias=False, activation_function=torch.nn.Identity()),
               st_models.Normalize()]
    _save_sentence_transformer(dst, modules, GEMMA_PROMPTS, 2048)
    return dst
