"""Tokenization stage: prompts, truncation (either side), token counts, as the model sees them.

HF `tokenizers` does the work in Rust and releases the GIL in `encode_batch`, so several
request threads tokenize while inference runs. Truncation settings are tokenizer state, so
there is one tokenizer per direction instead of mutating a shared one per request.

Where a model's tokenizer is BERT's WordPiece (`fast_wordpiece`), single texts take the compiled
path in `ember.ext._wordpiece` instead: the same ids, a fraction of the time. ASCII is classified
there; the non-ASCII characters it takes (CHAR_BLOCKS: accented Latin, Vietnamese, Greek,
Cyrillic, Armenian, Hebrew, Arabic, Devanagari, Bengali, Thai, Georgian, typographic punctuation,
math, CJK ideographs and punctuation, kana, fullwidth forms) come in a table derived from HF's
own normalizer and pre-tokenizer and checked against HF at load. A cross-encoder's (query,
document) pairs take it too where the pair template is BERT's
(`[CLS] A [SEP] B [SEP]`, type ids 0 then 1), cut as HF's longest_first cuts them. The rest
(other tokenizers, other scripts: emoji, Hangul, anything past U+FFFF; texts holding the first
character of an added token the compiled path does not match itself) go to HF.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from .errors import InvalidArgument
from .manifest import Manifest

log = logging.getLogger(__name__)

# Texts both tokenizers must agree on before a model gets the compiled path (a load-time check).
PROBES = ("Hello, World! It's ember's tokenizer check: 42 x-ray\tthings\n", "unaffable  UNAFFABLE", "", " ",
          "a" * 120 + " b", "#hashtag ##continued @user e.g. 3.14 100% C++ <html> ~/path_to/file.txt")


PAIR_PROBE_BUDGET = 9  # the pair probe also runs at this budget: PROBES' pairs are cut every way there

# Unicode blocks the compiled path takes characters from (where text strays from ASCII most).
CHAR_BLOCKS = ((0x80, 0x24F),     # Latin-1 Supplement, Latin Extended-A and -B
               (0x300, 0x36F),    # combining diacritical marks
               (0x370, 0x3FF),    # Greek
               (0x400, 0x4FF),    # Cyrillic
               (0x530, 0x5FF),    # Armenian, Hebrew
               (0x600, 0x6FF),    # Arabic
               (0x900, 0x9FF),    # Devanagari, Bengali
               (0xE00, 0xE7F),    # Thai
               (0x10A0, 0x10FF),  # Georgian
               (0x1E00, 0x1FFF),  # Latin Extended Additional (Vietnamese), Greek Extended
               (0x2000, 0x22FF),  # punctuation, super/subscripts, currency, letterlike, arrows, math
               (0x3000, 0x30FF),  # CJK symbols and punctuation, Hiragana, Katakana
               (0x3400, 0x4DBF),  # CJK unified ideographs extension A
               (0x4E00, 0x9FFF),  # CJK unified ideographs
               (0xF900, 0xFAFF),  # CJK compatibility ideographs
               (0xFF00, 0xFFEF))  # halfwidth and fullwidth forms
MAX_FORM_BYTES = 9  # a table character's normalized form, at most (the extension's MAX_REP)
_SEP = "|"  # between characters normalized together (ASCII punctuation: BertNormalizer keeps it as is)


def fast_wordpiece(spec: dict, exclude: frozenset = frozenset(), table: tuple | None = None):
    """The compiled WordPiece tokenizer equivalent to the HF tokenizer `spec` (its tokenizer.json),
    for ASCII text and the characters of CHAR_BLOCKS that behave as the table can say (not those in
    `exclude`; `table`: char_table's for the spec's normalizer, where the caller has it); None where
    the pipeline is not BERT's or the extension is not built."""
    try:
        from .ext._wordpiece import WordPiece
    except ImportError:  # pragma: no cover - only where the extension was not built
        return None
    norm, pre, model, post = (spec.get(k) or {} for k in ("normalizer", "pre_tokenizer", "model", "post_processor"))
    if norm.get("type") != "BertNormalizer" or not norm.get("clean_text") or \
            pre.get("type") != "BertPreTokenizer" or model.get("type") != "WordPiece":
        return None
    if post.get("type") == "BertProcessing":
        (_, cls_id), (_, sep_id) = post["cls"], post["sep"]
    elif post.get("type") == "TemplateProcessing":
        single, special = post.get("single", []), post.get("special_tokens", {})
        shape = [next(iter(piece)) for piece in single]
        ends = [single[0].get("SpecialToken", {}), single[-1].get("SpecialToken", {})]
        if shape != ["SpecialToken", "Sequence", "SpecialToken"] or \
                any(p.get("type_id", 0) for piece in single for p in piece.values()) or \
                any(len(special.get(e.get("id"), {}).get("ids", [])) != 1 for e in ends):
            return None
        cls_id, sep_id = (special[e["id"]]["ids"][0] for e in ends)
    else:
        return None
    vocab = model.get("vocab", {})
    unk = vocab.get(model.get("unk_token"))
    max_chars = model.get("max_input_chars_per_word", 100)
    if unk is None or not 0 < max_chars <= 255 or any(len(p.encode()) > 255 for p in vocab):
        return None  # (WordPiece holds a piece's length in a byte)
    # HF matches added tokens ([CLS], [MASK], ...) in the text before anything else. The compiled
    # path matches those HF matches in the raw text and that split it where BertPreTokenizer would
    # anyway; a text holding the first character of any other (either case) is left to HF.
    added, stops = [], set()
    for t in spec.get("added_tokens", []):
        content = t.get("content") or ""
        if _matchable(t, content):
            added.append((content, t["id"]))
        elif content:
            stops |= {content[0], content[0].lower(), content[0].upper()}
    return WordPiece(vocab, model.get("continuing_subword_prefix", "##"), unk, cls_id, sep_id,
                     bool(norm.get("lowercase")), max_chars, "".join(sorted(stops)), added,
                     [(cp, "punct" if kind == "alone" else kind, form)
                      for cp, kind, form in (char_table(norm) if table is None else table) if chr(cp) not in exclude])


def char_table(norm: dict) -> tuple[tuple[int, str, str], ...]:
    """(code point, class, normalized form) for the characters of CHAR_BLOCKS, as HF's own
    BertNormalizer (these settings) and BertPreTokenizer treat each one alone: dropped, a space,
    a word character (its form joins the word), punctuation (a word of its own), or alone: a CJK
    ideograph, which the normalizer puts between spaces, so that it is a word of its own whatever
    surrounds it (the compiled path treats it as punctuation). Characters that are none of these,
    or whose form is longer than the character, are left out (texts holding them go to HF). Each
    entry is checked in context against the whole HF tokenizer at load (ModelTokenizer), since
    only a character's behaviour alone is derived here. A block's characters go through the
    normalizer together and through the pre-tokenizer together (~30,000 characters; one at a time
    would take several times as long). Not kept: the table is ~5 MB of Python objects."""
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(
        clean_text=bool(norm.get("clean_text", True)),
        handle_chinese_chars=bool(norm.get("handle_chinese_chars", True)),
        strip_accents=norm.get("strip_accents"), lowercase=bool(norm.get("lowercase", True)))
    pre = pre_tokenizers.BertPreTokenizer()
    table = []
    for lo, hi in CHAR_BLOCKS:
        chars = [chr(cp) for cp in range(lo, hi + 1)]
        forms = normalizer.normalize_str(_SEP.join(chars)).split(_SEP)
        if len(forms) != len(chars):  # some form holds the separator: one at a time
            forms = [normalizer.normalize_str(ch) for ch in chars]
        candidates = []
        for ch, form in zip(chars, forms, strict=True):
            if len(form) == 3 and form[0] == form[2] == " " and not form[1].isspace():
                table.append((ord(ch), "alone", form[1]))
            elif len(form.encode()) > MAX_FORM_BYTES or len(form) > len(ch.encode()):
                continue
            elif not form:
                table.append((ord(ch), "drop", ""))
            elif form == " ":
                table.append((ord(ch), "space", ""))
            else:
                candidates.append((ord(ch), form))
        for (cp, form), words in zip(candidates, _words_of(pre, [f"a{f}a" for _, f in candidates]), strict=True):
            if words == [f"a{form}a"]:
                table.append((cp, "word", form))
            elif words == ["a", form, "a"] and len(form) == 1:
                table.append((cp, "punct", form))
    return tuple(table)


def _words_of(pre, segments: list[str]) -> list[list[str]]:
    """BertPreTokenizer's words of each segment, the segments pre-tokenized as one text (joined by
    spaces, which no word spans)."""
    text = " ".join(segments)
    ends, pos = [], 0
    for seg in segments:
        pos += len(seg)
        ends.append(pos)
        pos += 1
    out: list[list[str]] = [[] for _ in segments]
    i = 0
    for word, (start, _) in pre.pre_tokenize_str(text):
        while start >= ends[i]:
            i += 1
        out[i].append(word)
    return out


def bert_pairs(spec: dict) -> bool:
    """Whether the tokenizer's pair template is BERT's, `[CLS] A [SEP] B [SEP]` with type ids 0 over
    [CLS] A [SEP] and 1 after, with the single template's [CLS] and [SEP] (fast_wordpiece's)."""
    post = spec.get("post_processor") or {}
    if post.get("type") == "BertProcessing":
        return True
    if post.get("type") != "TemplateProcessing":
        return False
    single, pair = post.get("single", []), post.get("pair", [])
    shape = [(next(iter(p)), next(iter(p.values())).get("id"), next(iter(p.values())).get("type_id", 0)) for p in pair]
    if len(single) != 3 or len(shape) != 5:
        return False
    cls, sep = (next(iter(single[i].values())).get("id") for i in (0, 2))
    return shape == [("SpecialToken", cls, 0), ("Sequence", "A", 0), ("SpecialToken", sep, 0),
                     ("Sequence", "B", 1), ("SpecialToken", sep, 1)]


_PUNCT = frozenset(chr(c) for c in range(33, 127) if not chr(c).isalnum())  # BertPreTokenizer's, in ASCII


def _matchable(token: dict, content: str) -> bool:
    """Whether the compiled path matches this added token itself: HF matches it in the raw text
    (`normalized` false) with nothing stripped around it, and its ends are punctuation, so a match
    splits the text where BertPreTokenizer would split it anyway."""
    return len(content) >= 2 and content.isascii() and content[0] in _PUNCT and content[-1] in _PUNCT and \
        not any(token.get(k) for k in ("normalized", "lstrip", "rstrip", "single_word")) and \
        isinstance(token.get("id"), int)


@dataclass(slots=True)
class Tokenized:
    """One input, tokenized: ids (and type ids) as int64 arrays, its length, whether it was cut."""

    ids: np.ndarray
    type_ids: np.ndarray | None
    tokens: int
    truncated: bool


class ModelTokenizer:
    def token_texts(self, ids) -> list[str]:
        """The vocabulary's text of each token id ("" for an id it does not have)."""
        return [self._full.id_to_token(int(i)) or "" for i in ids]

    def vocab_size(self) -> int:
        return self._full.get_vocab_size(with_added_tokens=True)

    def special_ids(self) -> set[int]:
        """Ids of the special tokens ([CLS], </s>, <pad>, …)."""
        return {i for i, t in self._full.get_added_tokens_decoder().items() if t.special}

    def __init__(self, model_dir: Path, manifest: Manifest, with_type_ids: bool, fast: bool = True):
        path = model_dir / "tokenizer.json"
        base = Tokenizer.from_file(str(path))
        base.no_padding()
        base.no_truncation()
        self.max_tokens = manifest.max_tokens
        self.with_type_ids = with_type_ids
        serialized = base.to_str()
        self._full = base
        self._by_direction: dict[str, Tokenizer] = {}
        self.template = manifest.rerank_template
        budget = self.max_tokens
        if self.template:
            # prefix + body + suffix: the prefix and suffix are kept whole, only the body is cut
            self._prefix = np.array(base.encode(self.template["prefix"], add_special_tokens=False).ids, dtype=np.int64)
            self._suffix = np.array(base.encode(self.template["suffix"], add_special_tokens=False).ids, dtype=np.int64)
            budget = self.max_tokens - len(self._prefix) - len(self._suffix)
            if budget < 1:
                raise ValueError(f"the rerank template alone is longer than max_tokens={self.max_tokens}")
        for direction in ("right", "left"):
            tok = Tokenizer.from_str(serialized)
            tok.enable_truncation(budget, strategy="longest_first", direction=direction)
            self._by_direction[direction] = tok
        self.budget = budget
        self._zeros = np.zeros(budget, dtype=np.int64)  # the type ids of any single text (views of it)
        self._zeros.flags.writeable = False
        # (a budget under 3 leaves no room for a piece between [CLS] and [SEP]: HF's own edge cases)
        spec = json.loads(serialized)
        self.fast = None
        bert_normalizer = (spec.get("normalizer") or {}).get("type") == "BertNormalizer"
        if not self.template and fast and budget >= 3 and bert_normalizer:
            table = char_table(spec["normalizer"])
            self.fast = fast_wordpiece(spec, table=table)
            differ = self._differing_chars(table) if self.fast is not None else frozenset()
            if differ:
                log.info("model %s: %d characters of the compiled path's table tokenize differently in HF; "
                         "texts holding them go to HF", manifest.name, len(differ))
                self.fast = fast_wordpiece(spec, exclude=differ, table=table)
        self.fast_pairs = self.fast is not None and bert_pairs(spec)
        if self.fast is not None and not self._agrees():
            log.warning("model %s: the compiled WordPiece path disagrees with tokenizer.json on a probe text; "
                        "every text goes to HF tokenizers", manifest.name)
            self.fast, self.fast_pairs = None, False
        if self.fast_pairs and not self._pairs_agree():
            log.warning("model %s: the compiled WordPiece path disagrees with tokenizer.json on a probe pair; "
                        "every pair goes to HF tokenizers", manifest.name)
            self.fast_pairs = False
        if self.fast is not None:
            log.info("model %s: texts take the compiled WordPiece path (ASCII and %d other characters; "
                     "--no-fast-tokenizer: HF only)", manifest.name, len(self.fast.table_chars))

    def _differing_chars(self, table: tuple) -> frozenset:
        """The table's characters whose ids differ from HF's in context: inside a word, alone,
        doubled, at a word's end (a character's behaviour alone is what char_table derived). A
        character the normalizer puts between spaces (CJK) is a word of its own in any context,
        so its id alone is compared. 64 characters to a text, then one at a time where one differs."""
        alone = {chr(cp) for cp, kind, _ in table if kind == "alone"}
        differ = set()
        for chars, context in (([c for c in self.fast.table_chars if c not in alone], "x{c}y {c} {c}{c}z a{c}"),
                               ([c for c in self.fast.table_chars if c in alone], "{c}")):
            groups = [chars[i:i + 64] for i in range(0, len(chars), 64)]
            texts = [" ".join(context.format(c=c) for c in g) for g in groups]
            suspects = [c for i in self._differing(texts) for c in groups[i]]
            differ |= {suspects[i] for i in self._differing([context.format(c=c) for c in suspects])}
        return frozenset(differ)

    def _differing(self, texts: list[str]) -> list[int]:
        """The indices of the texts whose ids differ between the compiled path and HF (untruncated)."""
        if not texts:
            return []
        ids, offsets, _ = self.fast.encode(texts, 1 << 40, False)
        bounds = offsets.tolist()
        hf = self._full.encode_batch(texts)
        return [i for i, (a, b, e) in enumerate(zip(bounds[:-1], bounds[1:], hf, strict=True))
                if ids[a:b].tolist() != e.ids]

    def _agrees(self) -> bool:
        """Whether the compiled path gives HF's ids and cuts on PROBES, both directions."""
        for direction in ("right", "left"):
            mine = self.encode(list(PROBES), truncate=True, direction=direction)
            hf = [self._convert(e) for e in self._by_direction[direction].encode_batch(list(PROBES))]
            pairs = zip(mine, hf, strict=True)
            if any(a.ids.tolist() != b.ids.tolist() or a.truncated != b.truncated for a, b in pairs):
                return False
        return True

    def _pairs_agree(self) -> bool:
        """Whether the compiled path gives HF's ids, type ids and cuts on pairs of PROBES, both
        directions, at the model's budget and at a small one (PAIR_PROBE_BUDGET), where HF's
        longest_first cuts both, one or neither of a pair."""
        docs = list(PROBES)
        for budget in sorted({self.budget, min(self.budget, PAIR_PROBE_BUDGET)}):
            for direction in ("right", "left"):
                self._full.enable_truncation(budget, strategy="longest_first", direction=direction)
                try:
                    hf = self._full.encode_batch([(q, d) for q in PROBES for d in docs])
                finally:
                    self._full.no_truncation()
                for k, query in enumerate(PROBES):
                    got = self.fast.encode_pairs(query, docs, budget, direction == "left")
                    if got is None:
                        continue  # a query the compiled path leaves to HF
                    ids, types, offsets, cut = got
                    bounds = offsets.tolist()
                    for i, b in enumerate(hf[k * len(docs):(k + 1) * len(docs)]):
                        lo, hi = bounds[i], bounds[i + 1]
                        if hi > lo and (ids[lo:hi].tolist() != b.ids or bool(cut[i]) != bool(b.overflowing) or
                                        types[lo:hi].tolist() != b.type_ids):
                            return False
        return True

    def _convert(self, enc: Encoding) -> Tokenized:
        ids = np.array(enc.ids, dtype=np.int64)
        type_ids = np.array(enc.type_ids, dtype=np.int64) if self.with_type_ids else None
        return Tokenized(ids, type_ids, len(ids), bool(enc.overflowing))

    def _too_long(self, field: str, index: int, inp) -> InvalidArgument:
        full = self._full.encode(*inp) if isinstance(inp, tuple) else self._full.encode(inp)
        return InvalidArgument(
            field if field == "query" else f"{field}[{index}]",
            f"has {len(full.ids)} tokens, more than the model's limit of {self.max_tokens} "
            "(set truncate=true to cut it)",
        )

    def encode(self, texts: list[str], *, truncate: bool, direction: str, field: str = "inputs") -> list[Tokenized]:
        """Tokenize single texts (prompts already applied). truncate=False: too long → InvalidArgument."""
        out = self._encode_fast(texts, direction) if self.fast is not None else None
        if out is None:
            out = [self._convert(e) for e in self._by_direction[direction].encode_batch(texts)]
        if not truncate:
            for i, t in enumerate(out):
                if t.truncated:
                    raise self._too_long(field, i, texts[i])
        return out

    def _encode_fast(self, texts: list[str], direction: str) -> list[Tokenized] | None:
        """The compiled path's answer for `texts`, those it cannot take from HF; None where a single
        text must go to HF."""
        zeros = self._zeros if self.with_type_ids else None
        if len(texts) == 1:
            one = self.fast.encode_one(texts[0], self.budget, direction == "left")
            if one is None:
                return None
            ids, cut = one
            return [Tokenized(ids, None if zeros is None else zeros[:len(ids)], len(ids), cut)]
        ids, offsets, cut = self.fast.encode(texts, self.budget, direction == "left")
        return self._unpacked(ids, None, offsets, cut, texts, direction)

    def _unpacked(self, ids: np.ndarray, types: np.ndarray | None, offsets: np.ndarray, cut: np.ndarray,
                  inputs: list, direction: str) -> list[Tokenized]:
        """One Tokenized per input from the compiled path's arrays (`types` None: single texts, whose
        type ids are zeros); the inputs (texts or pairs) it left to HF, with no ids, tokenized there
        in their place."""
        bounds = offsets.tolist()
        out = [Tokenized(ids[a:b], None if not self.with_type_ids else self._zeros[:b - a] if types is None
                         else types[a:b], b - a, c)
               for a, b, c in zip(bounds[:-1], bounds[1:], cut.tolist(), strict=True)]
        rest = [i for i, t in enumerate(out) if not t.tokens]
        if rest:
            encs = self._by_direction[direction].encode_batch([inputs[i] for i in rest])
            for i, e in zip(rest, encs, strict=True):
                out[i] = self._convert(e)
        return out

    def encode_pairs(
        self, query: str, documents: list[str], *, truncate: bool, direction: str, instruction: str = ""
    ) -> list[Tokenized]:
        """Tokenize (query, document) pairs for a cross-encoder (or into the model's rerank template)."""
        if self.template:
            return self._encode_template(query, documents, truncate=truncate, direction=direction,
                                         instruction=instruction or self.template["instruction"])
        pairs = [(query, d) for d in documents]
        out = self._pairs_fast(query, documents, direction) if self.fast_pairs else None
        if out is None:
            out = [self._convert(e) for e in self._by_direction[direction].encode_batch(pairs)]
        if not truncate:
            for i, t in enumerate(out):
                if t.truncated:
                    raise self._too_long("documents", i, pairs[i])
        return out

    def _pairs_fast(self, query: str, documents: list[str], direction: str) -> list[Tokenized] | None:
        """The compiled path's pairs, those it cannot take from HF; None where it cannot take the query."""
        got = self.fast.encode_pairs(query, documents, self.budget, direction == "left")
        if got is None:
            return None
        ids, types, offsets, cut = got
        return self._unpacked(ids, types, offsets, cut, [(query, d) for d in documents], direction)

    def _encode_template(self, query: str, documents: list[str], *, truncate: bool, direction: str,
                         instruction: str) -> list[Tokenized]:
        body = self.template["body"]
        texts = [body.format(instruction=instruction, query=query, document=d) for d in documents]
        encs = self._by_direction[direction].encode_batch(texts, add_special_tokens=False)
        out = []
        for i, e in enumerate(encs):
            if e.overflowing and not truncate:
                n = len(self._full.encode(texts[i], add_special_tokens=False).ids)
                raise InvalidArgument(f"documents[{i}]", f"has {n + len(self._prefix) + len(self._suffix)} tokens "
                                      f"with the query and the model's prompt template, more than the limit of "
                                      f"{self.max_tokens} (set truncate=true to cut it)")
            ids = np.concatenate([self._prefix, np.array(e.ids, dtype=np.int64), self._suffix])
            out.append(Tokenized(ids, np.zeros_like(ids) if self.with_type_ids else None, len(ids),
                                 bool(e.overflowing)))
        return out
