"""The compiled WordPiece path (ember.ext._wordpiece via ember.tokenization) against HF tokenizers,
the reference: the same ids, lengths and truncation flags on real and generated text, in both
directions; the texts it must not take go to HF; tokenizers that are not BERT's never take it."""
import json
import random
import shutil

import numpy as np
import pytest
from conftest import minilm_dir, real_texts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember import tokenization
from ember.errors import InvalidArgument
from ember.tokenization import ModelTokenizer, fast_wordpiece

pytest.importorskip("ember.ext._wordpiece", reason="the compiled extension is not built")

# ASCII with everything BertNormalizer and BertPreTokenizer treat specially: controls (dropped),
# \t \n \r (spaces), NUL and DEL, punctuation ('#' of the continuation prefix among it), '[' (the
# first character of BERT's added tokens), digits and both cases.
ALPHABET = "abcdeXYZ019 .,;:'\"!?#[]()-_~`@\t\n\r\x00\x01\x0b\x0c\x1f\x7f"
# Characters of the compiled path's table (accented and special-cased letters, Greek with both
# sigmas, Cyrillic, a combining accent, no-break and zero-width spaces, a soft hyphen, typographic
# punctuation, math, CJK ideographs (one a compatibility ideograph that normalizes to another),
# CJK punctuation and the ideographic space, kana with and without a voicing mark, fullwidth
# letters and punctuation; Vietnamese, Hebrew, Arabic, Devanagari, Bengali (a vowel sign whose NFD
# is two characters), Thai, Georgian) and some outside it (Hangul; emoji, past U+FFFF; a
# replacement character).
NON_ASCII = ("éÉßàÀîõüñçİıǅΣσςβΔμПриветЁё\u0301\u00a0\u2028\u200b\u00ad–—’“”…±×≥∼·°"
             "中文語豈、。「」\u3000ひがカガｆＵＬ！，ếộשָׁب،ـक़िোกี่ა한😀\ufffd")


def tokenizers_for(tmp_path, max_tokens: int):
    """(compiled path on, HF only) for the real all-MiniLM-L6-v2 tokenizer.json, cut at max_tokens."""
    from ember.manifest import Manifest

    shutil.copy2(minilm_dir() / "tokenizer.json", tmp_path / "tokenizer.json")
    m = Manifest(name="t", task="embed", architecture="bert", dimensions=384, max_tokens=max_tokens)
    fast, hf = (ModelTokenizer(tmp_path, m, with_type_ids=True, fast=f) for f in (True, False))
    assert fast.fast is not None and hf.fast is None
    return fast, hf


def assert_same(fast: ModelTokenizer, hf: ModelTokenizer, texts: list[str], direction: str) -> None:
    a = fast.encode(texts, truncate=True, direction=direction)
    b = hf.encode(texts, truncate=True, direction=direction)
    assert len(a) == len(b) == len(texts)
    for t, x, y in zip(texts, a, b, strict=True):
        assert x.ids.tolist() == y.ids.tolist(), repr(t)
        assert x.type_ids.tolist() == y.type_ids.tolist(), repr(t)
        assert (x.tokens, x.truncated) == (y.tokens, y.truncated), repr(t)
        assert x.ids.dtype == np.int64


@pytest.mark.parametrize("max_tokens", [256, 16, 3])
@pytest.mark.parametrize("direction", ["right", "left"])
def test_real_texts_match_hf(tmp_path, max_tokens, direction):
    fast, hf = tokenizers_for(tmp_path, max_tokens)
    texts = real_texts(600, 40)  # STS-B sentences, and long texts over the limit
    assert_same(fast, hf, texts, direction)  # one batch (mixed with texts HF takes)
    for t in texts[:100]:
        assert_same(fast, hf, [t], direction)  # the single-text path


@pytest.mark.parametrize("direction", ["right", "left"])
def test_generated_ascii_matches_hf(tmp_path, direction):
    fast, hf = tokenizers_for(tmp_path, 24)
    rnd = random.Random(7)
    texts = ["".join(rnd.choice(ALPHABET) for _ in range(rnd.randint(0, 80))) for _ in range(3000)]
    # Words at and around WordPiece's 100-character limit, words with no piece, added tokens.
    texts += ["a" * 99, "a" * 100, "a" * 101, "b" * 300 + " ok", "x" * 1000, "", " ", "\x00", "[CLS] hi [SEP]",
              "[MASK]", "[mask] a", "unaffable UNAFFABLE", "##ing ##", "a##b", "\x7fdel\x7f", "tab\there"]
    assert_same(fast, hf, texts, direction)
    for t in texts[-16:]:
        assert_same(fast, hf, [t], direction)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.text(alphabet=ALPHABET + NON_ASCII, max_size=60), min_size=1, max_size=5))
def test_property_matches_hf(tmp_path_factory, texts):
    fast, hf = _shared(tmp_path_factory)
    for direction in ("right", "left"):
        assert_same(fast, hf, texts, direction)


_PAIR = {}


def _shared(tmp_path_factory):
    if "pair" not in _PAIR:
        _PAIR["pair"] = tokenizers_for(tmp_path_factory.mktemp("wp"), 12)
    return _PAIR["pair"]


def taken(fast: ModelTokenizer, texts: list[str]) -> list[bool]:
    """Which texts the compiled path tokenizes itself (the others are marked for HF)."""
    _, offsets, _ = fast.fast.encode(texts, 64, False)
    return [bool(offsets[i + 1] > offsets[i]) for i in range(len(texts))]


def test_texts_it_cannot_take_go_to_hf_in_order(tmp_path):
    fast, hf = tokenizers_for(tmp_path, 64)
    texts = ["plain ascii", "café au lait", "a [MASK] here", "emoji 😀", "more ascii, fine.", "한국어", "naïve"]
    assert taken(fast, texts) == [True, True, True, False, True, False, True]
    assert fast.fast.encode_one("한국어", 64, False) is None
    assert fast.fast.encode_one("a lone surrogate \ud800", 64, False) is None  # no UTF-8: left to HF
    assert taken(fast, ["x\udc00", "fine"]) == [False, True]
    assert_same(fast, hf, texts, "right")
    assert_same(fast, hf, ["naïve"], "right")


@pytest.mark.parametrize("direction", ["right", "left"])
def test_the_character_table_matches_hf(tmp_path, direction):
    """Texts made of every character the table takes, ASCII between them, tokenize as in HF."""
    fast, hf = tokenizers_for(tmp_path, 24)
    chars = fast.fast.table_chars
    assert len(chars) > 30000 and all(c in chars for c in "éβ—中豈、ひカＡ，")
    rnd = random.Random(5)
    pool = "".join(c for c in chars if ord(c) < 0x3000) + "".join(rnd.sample(chars, 300)) + ALPHABET
    texts = ["".join(rnd.choice(pool) for _ in range(rnd.randint(0, 40))) for _ in range(3000)]
    texts += ["".join(chars[i:i + 40]) for i in range(0, len(chars), 40)]
    assert all(taken(fast, texts))
    assert_same(fast, hf, texts, direction)
    for t in texts[:200]:
        assert_same(fast, hf, [t], direction)


# (a character, the entry the table gets wrong for it, a character beside it that stays, texts)
WRONG_ENTRIES = [("é", (0xE9, "punct", "e"), "è", ["café", "crème", "café crème"]),  # é made punctuation
                 ("中", (ord("中"), "alone", "文"), "文", ["中文", "文字"])]  # an ideograph given another's id


@pytest.mark.parametrize("char, entry, kept, texts", WRONG_ENTRIES)
def test_a_table_character_that_differs_from_hf_is_left_to_it(tmp_path, monkeypatch, caplog, char, entry, kept, texts):
    """The load check compares each table character with HF (in context; an ideograph by its id
    alone): one the table gets wrong is taken out, and texts holding it go to HF."""
    real = tokenization.char_table

    def wrong(norm):
        return tuple(entry if cp == entry[0] else (cp, kind, form) for cp, kind, form in real(norm))

    monkeypatch.setattr(tokenization, "char_table", wrong)
    with caplog.at_level("INFO"):
        fast, hf = tokenizers_for(tmp_path, 32)
    assert char not in fast.fast.table_chars and kept in fast.fast.table_chars
    assert "1 characters" in caplog.text
    assert taken(fast, texts[:2]) == [False, True]
    assert_same(fast, hf, texts, "right")


@pytest.mark.parametrize("change", [{}, {"handle_chinese_chars": False}, {"lowercase": False, "strip_accents": None}])
def test_cjk_matches_hf(tmp_path, change):
    """Chinese and Japanese text (ideographs, kana, CJK and fullwidth punctuation, mixed with ASCII)
    takes the compiled path with each normalizer setting: ideographs words of their own where the
    normalizer puts them between spaces, word characters where it does not."""
    from ember.manifest import Manifest

    spec = json.loads((minilm_dir() / "tokenizer.json").read_text())
    spec["normalizer"].update(change)
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    m = Manifest(name="t", task="embed", architecture="bert", dimensions=384, max_tokens=24)
    fast, hf = (ModelTokenizer(tmp_path, m, with_type_ids=True, fast=f) for f in (True, False))
    texts = ["我爱北京天安门。", "你好，世界！这是一个测试（test）。", "東京タワーはとても高いです",
             "ｆｕｌｌｗｉｄｔｈ　ＡＢＣ！", "混合 mixed text 和 English，「括号」", "ガギグゲゴ パピプペポ",
             "豈更車", "中" * 150, "a中b中c"]
    rnd = random.Random(9)
    pool = [chr(rnd.randint(0x4E00, 0x9FFF)) for _ in range(200)] + list("、。「」ひらがなカタカナ，！ ab1 ")
    texts += ["".join(rnd.choice(pool) for _ in range(rnd.randint(0, 50))) for _ in range(500)]
    assert all(taken(fast, texts))
    for direction in ("right", "left"):
        assert_same(fast, hf, texts, direction)
        for t in texts[:9]:
            assert_same(fast, hf, [t], direction)


@pytest.mark.parametrize("direction", ["right", "left"])
def test_other_scripts_match_hf(tmp_path, direction):
    """Vietnamese, Hebrew, Arabic, Hindi, Bengali, Thai, Georgian, Armenian and polytonic Greek take
    the compiled path with HF's ids: marks NFD splits off and strips, vowel signs it keeps."""
    fast, hf = tokenizers_for(tmp_path, 24)
    texts = ["Tiếng Việt có dấu: ế, ộ, ữ.", "שָׁלוֹם עוֹלָם", "مرحبا بالعالم، كيف حالك؟", "नमस्ते दुनिया। क़िला",
             "আমি বাংলায় গান গাই", "สวัสดีชาวโลก ที่นี่", "გამარჯობა მსოფლიო", "Բարեւ աշխարհ", "ἐν ἀρχῇ ἦν ὁ λόγος"]
    rnd = random.Random(2)
    pool = "".join(dict.fromkeys("".join(texts))) + " ,.!"
    texts += ["".join(rnd.choice(pool) for _ in range(rnd.randint(0, 60))) for _ in range(500)]
    assert all(taken(fast, texts))
    assert_same(fast, hf, texts, direction)
    for t in texts[:9]:
        assert_same(fast, hf, [t], direction)


# Pieces of BERT's added tokens, whole, cut, in the wrong case and nested, among words and punctuation.
FRAGMENTS = ["[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]", "[mask]", "[MAS", "K]", "[", "]", "[[", "]]", "CLS",
             "a", "word", "x1", " ", "  ", ",", "#", "\t", "\x00", "[CLS", "SEP]", "[ MASK]", "[MASK ]"]


@pytest.mark.parametrize("budget", [24, 6])
@pytest.mark.parametrize("direction", ["right", "left"])
def test_added_tokens_in_the_text_match_hf(tmp_path, budget, direction):
    """BERT's added tokens ([CLS], [MASK], ...) are matched in the raw text as HF matches them, so
    texts holding them, or brackets, take the compiled path."""
    fast, hf = tokenizers_for(tmp_path, budget)
    rnd = random.Random(11)
    texts = ["".join(rnd.choice(FRAGMENTS) for _ in range(rnd.randint(1, 12))) for _ in range(2000)]
    texts += ["foo[MASK]bar", "[[MASK]]", "[MASK", "ab[MASK][MASK]", "q[UNK]z", "[1] cited [2,3]", "[PAD]"]
    assert all(taken(fast, texts))
    assert_same(fast, hf, texts, direction)
    for t in texts[-7:]:
        assert_same(fast, hf, [t], direction)


@pytest.mark.parametrize("change", [{"normalized": True}, {"lstrip": True}, {"rstrip": True},
                                    {"single_word": True}, {"content": "<x"}, {"content": "xy]"},
                                    {"content": "«x»"}, {"content": "Éx]"}])
def test_added_tokens_it_does_not_match_send_texts_to_hf(tmp_path, change):
    """An added token matched after normalization, with stripping around it, or without punctuation
    at both ends: texts holding its first character (either case) go to HF, which matches it."""
    from ember.manifest import Manifest

    spec = json.loads((minilm_dir() / "tokenizer.json").read_text())
    extra = {"id": len(spec["model"]["vocab"]), "special": False, "content": "[extra]", "single_word": False,
             "lstrip": False, "rstrip": False, "normalized": False, **change}
    spec["added_tokens"].append(extra)
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    m = Manifest(name="t", task="embed", architecture="bert", dimensions=384, max_tokens=32)
    fast, hf = (ModelTokenizer(tmp_path, m, with_type_ids=True, fast=f) for f in (True, False))
    first = extra["content"][0]
    assert fast.fast is not None and first in fast.fast.stop_chars and first.upper() in fast.fast.stop_chars
    texts = ["plain", f"a {extra['content']} b", f"{first}x", f"{extra['content'].upper()} z", "[MASK] only"]
    assert taken(fast, texts) == [True, False, False, False, first != "["]
    assert_same(fast, hf, texts, "right")


def test_too_long_without_truncation_names_the_input(tmp_path):
    fast, _ = tokenizers_for(tmp_path, 8)
    with pytest.raises(InvalidArgument) as e:
        fast.encode(["short", "one two three four five six seven eight"], truncate=False, direction="right")
    assert e.value.violations[0].field == "inputs[1]" and "10 tokens" in e.value.message
    with pytest.raises(InvalidArgument):
        fast.encode(["one two three four five six seven eight"], truncate=False, direction="right")


def test_type_ids_cannot_be_written(tmp_path):
    """Single texts share one read-only array of zeros for their type ids."""
    fast, _ = tokenizers_for(tmp_path, 32)
    t = fast.encode(["hello there"], truncate=True, direction="right")[0]
    with pytest.raises(ValueError):
        t.type_ids[0] = 1


def test_only_bert_pipelines_qualify():
    spec = json.loads((minilm_dir() / "tokenizer.json").read_text())
    assert fast_wordpiece(spec) is not None
    for key, value in (("normalizer", {"type": "NFKC"}), ("pre_tokenizer", {"type": "Whitespace"}),
                       ("model", {**spec["model"], "type": "BPE"}),
                       ("normalizer", {**spec["normalizer"], "clean_text": False}),
                       ("post_processor", {"type": "RobertaProcessing"}),
                       ("post_processor", None), ("normalizer", None),
                       ("model", {**spec["model"], "max_input_chars_per_word": 1000})):
        assert fast_wordpiece({**spec, key: value}) is None, key
    # a template with a pair-only shape, or type id 1 on the single sequence, is not [CLS] $A [SEP]
    single = spec["post_processor"]["single"]
    shifted = [dict(p) for p in single]
    shifted[1] = {"Sequence": {"id": "A", "type_id": 1}}
    assert fast_wordpiece({**spec, "post_processor": {**spec["post_processor"], "single": shifted}}) is None
    assert fast_wordpiece({**spec, "post_processor": {**spec["post_processor"], "single": single[1:]}}) is None


def test_other_families_use_hf(tmp_path):
    """Byte-level BPE (Qwen3) and Unigram (XLM-R, BGE-M3) tokenizers never take the compiled path."""
    from families import qwen3_tokenizer, xlmr_tokenizer
    from ember.manifest import Manifest

    for build, name in ((lambda d: qwen3_tokenizer(d, eos_suffix=True), "qwen"), (xlmr_tokenizer, "xlmr")):
        d = tmp_path / name
        d.mkdir()
        build(d)
        m = Manifest(name=name, task="embed", architecture=name, dimensions=8, max_tokens=32)
        tok = ModelTokenizer(d, m, with_type_ids=False)
        assert tok.fast is None
        assert tok.encode(["plain ascii text"], truncate=True, direction="right")[0].tokens > 0


def test_a_path_that_disagrees_with_hf_is_turned_off(tmp_path, monkeypatch, caplog):
    """The load-time probe: a compiled table that would give other ids than tokenizer.json is dropped."""
    real = tokenization.fast_wordpiece

    def wrong_cls(spec, **kw):
        spec = json.loads(json.dumps(spec))
        spec["post_processor"]["special_tokens"]["[CLS]"]["ids"] = [7]
        return real(spec, **kw)

    monkeypatch.setattr(tokenization, "fast_wordpiece", wrong_cls)
    shutil.copy2(minilm_dir() / "tokenizer.json", tmp_path / "tokenizer.json")
    from ember.manifest import Manifest

    tok = ModelTokenizer(tmp_path, Manifest(name="t", task="embed", architecture="bert", dimensions=384, max_tokens=64),
                         with_type_ids=True)
    assert tok.fast is None
    assert "disagrees" in caplog.text
    assert tok.encode(["hello"], truncate=True, direction="right")[0].ids[0] == 101


def test_server_setting_turns_it_off(tiny_models_dir):
    from conftest import start_server

    s = start_server(models_dir=str(tiny_models_dir), models=("tiny-embed",), fast_tokenizer=False)
    try:
        s.wait_loaded()
        assert s.server.registry.models["tiny-embed"].tokenizer.fast is None
    finally:
        s.stop()


def test_tiny_server_uses_it(tiny_server):
    """The tiny models carry all-MiniLM-L6-v2's tokenizer: every tiny-server test runs the compiled path."""
    assert tiny_server.server.registry.models["tiny-embed"].tokenizer.fast is not None


def assert_same_pairs(fast: ModelTokenizer, hf: ModelTokenizer, query: str, docs: list[str], direction: str) -> None:
    a = fast.encode_pairs(query, docs, truncate=True, direction=direction)
    b = hf.encode_pairs(query, docs, truncate=True, direction=direction)
    assert len(a) == len(b) == len(docs)
    for d, x, y in zip(docs, a, b, strict=True):
        assert x.ids.tolist() == y.ids.tolist(), (query, d)
        assert x.type_ids.tolist() == y.type_ids.tolist(), (query, d)
        assert (x.tokens, x.truncated) == (y.tokens, y.truncated), (query, d)


@pytest.mark.parametrize("max_tokens", [256, 16, 4, 3])
@pytest.mark.parametrize("direction", ["right", "left"])
def test_pairs_match_hf(tmp_path, max_tokens, direction):
    """Cross-encoder pairs: HF's longest_first cut (both cut, one cut, neither), type ids 0 then 1;
    documents it cannot take (emoji, Hangul) go to HF in their place, a query it cannot take sends all."""
    fast, hf = tokenizers_for(tmp_path, max_tokens)
    assert fast.fast_pairs and not hf.fast_pairs
    texts = real_texts(120, 12) + ["", " ", "a [MASK] b", "emoji 😀 here", "한국어", "中文", "naïve café", "x" * 300]
    for query in texts[:25] + texts[-8:]:
        assert_same_pairs(fast, hf, query, texts, direction)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(alphabet=ALPHABET + NON_ASCII, max_size=40),
       st.lists(st.text(alphabet=ALPHABET + NON_ASCII, max_size=60), min_size=1, max_size=5))
def test_property_pairs_match_hf(tmp_path_factory, query, docs):
    fast, hf = _shared(tmp_path_factory)
    for direction in ("right", "left"):
        assert_same_pairs(fast, hf, query, docs, direction)


def test_pairs_take_the_compiled_path(tmp_path):
    fast, _ = tokenizers_for(tmp_path, 12)
    ids, types, offsets, cut = fast.fast.encode_pairs("a query", ["one doc", "emoji 😀", "a much longer document "
                                                                  "than the budget holds"], 12, False)
    assert offsets.tolist()[:3] == [0, 7, 7]  # [CLS] a query [SEP] one doc [SEP]; the emoji's left to HF
    assert types[:7].tolist() == [0, 0, 0, 0, 1, 1, 1] and cut.tolist() == [False, False, True]
    assert fast.fast.encode_pairs("emoji 😀", ["doc"], 12, False) is None
    with pytest.raises(InvalidArgument) as e:
        fast.encode_pairs("q", ["short", "one two three four five six seven eight nine ten"], truncate=False,
                          direction="right")
    assert e.value.violations[0].field == "documents[1]"


def test_pairs_without_type_ids(tmp_path):
    from ember.manifest import Manifest

    shutil.copy2(minilm_dir() / "tokenizer.json", tmp_path / "tokenizer.json")
    m = Manifest(name="t", task="rerank", architecture="bert", dimensions=1, max_tokens=32)
    tok = ModelTokenizer(tmp_path, m, with_type_ids=False)
    assert tok.fast_pairs
    (t,) = tok.encode_pairs("a query", ["a doc"], truncate=True, direction="right")
    assert t.type_ids is None and t.ids.tolist() == tok._full.encode("a query", "a doc").ids


def test_pair_templates_that_are_not_berts_go_to_hf():
    spec = json.loads((minilm_dir() / "tokenizer.json").read_text())
    post = spec["post_processor"]
    assert tokenization.bert_pairs(spec)
    assert tokenization.bert_pairs({**spec, "post_processor": {"type": "BertProcessing"}})
    same_type = [dict(p) for p in post["pair"]]
    same_type[3] = {"Sequence": {"id": "B", "type_id": 0}}
    no_middle = post["pair"][:2] + post["pair"][3:]
    for pair in (same_type, no_middle, post["pair"][:-1]):
        assert not tokenization.bert_pairs({**spec, "post_processor": {**post, "pair": pair}})
    assert not tokenization.bert_pairs({**spec, "post_processor": {"type": "RobertaProcessing"}})


class _CutPairsWrong:
    """A compiled WordPiece whose pairs are wrong only where a pair is cut (the rest delegated)."""

    def __init__(self, wp):
        self._wp = wp

    def __getattr__(self, name):
        return getattr(self._wp, name)

    def encode_pairs(self, *args):
        got = self._wp.encode_pairs(*args)
        if got is not None:
            ids, _, offsets, cut = got
            for i in np.flatnonzero(cut):
                ids[offsets[i + 1] - 1] = 7
        return got


@pytest.mark.parametrize("max_tokens", [256, 16])
def test_pairs_that_disagree_with_hf_are_turned_off(tmp_path, monkeypatch, caplog, max_tokens):
    """The load-time pair probe: pairs wrong only where a pair is cut turn pairs off (single texts
    keep the compiled path), also where the model's budget cuts none of the probe's pairs (256):
    the probe cuts them at a small budget too."""
    real = tokenization.fast_wordpiece
    monkeypatch.setattr(tokenization, "fast_wordpiece", lambda *a, **kw: _CutPairsWrong(real(*a, **kw)))
    fast, hf = tokenizers_for(tmp_path, max_tokens)
    assert not fast.fast_pairs and fast.fast is not None
    assert "probe pair" in caplog.text
    assert_same_pairs(fast, hf, "a query", ["a document " * 40], "right")
