# cython: language_level=3
"""A compiled BERT WordPiece tokenizer: HF `tokenizers`' answer, without its cost.

HF `tokenizers` keeps an alignment map per character through normalization and pre-tokenization,
and builds an `Encoding` (offsets, words, masks) that ember throws away: on this project's 2-core
machine a 30-token sentence costs ~100 µs warm and ~300 µs after an ONNX Runtime run has cooled
the caches, a share of a single text's latency. For the tokenizers BERT-family models ship
(BertNormalizer with clean_text, BertPreTokenizer, WordPiece, `[CLS] $A [SEP]`), the whole
pipeline is a few table lookups per word. ASCII is classified here; other characters by a table
that `ember.tokenization` derives from HF's own normalizer and pre-tokenizer for the blocks
where text usually strays from ASCII (accented Latin, Vietnamese, Greek, Cyrillic, Armenian,
Hebrew, Arabic, Devanagari, Bengali, Thai, Georgian, typographic punctuation, math symbols) and
for Chinese and Japanese (CJK ideographs, which BERT's normalizer makes words
of their own, kana, CJK and fullwidth punctuation), each entry checked against HF at load.
`WordPiece.encode` does that in one pass over the text's bytes, without the GIL, and gives ids,
lengths and truncation flags; `encode_pairs` gives a cross-encoder's `[CLS] query [SEP] document
[SEP]`, cut as HF's longest_first cuts a pair. Added tokens that
HF matches in the raw text ([CLS], [MASK], ...: `normalized` false, no stripping, punctuation at
both ends, so a match splits the text where BertPreTokenizer would anyway) are matched on the way,
longest first, as HF matches them. A text it cannot take (a character outside the table, or one
that starts any other added token) is marked for HF, and `ember.tokenization` sends it there.

The reference is HF `tokenizers` itself: the tests compare ids and truncation with it on real
and adversarial texts. Which tokenizers qualify is decided in `ember.tokenization.fast_wordpiece`.
"""
import numpy as np
cimport numpy as cnp
from cpython.unicode cimport PyUnicode_Check
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcmp, memcpy, memmove

from _types cimport i64

cnp.import_array()

cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    const char* PyUnicode_AsUTF8AndSize(object o, Py_ssize_t* size) except NULL

# Bytes classes (ASCII): what BertNormalizer(clean_text) and BertPreTokenizer make of each byte.
DEF C_WORD = 0    # part of a word (letters, digits)
DEF C_SPACE = 1   # whitespace: ends a word (\t \n \r become spaces, and spaces split)
DEF C_PUNCT = 2   # ASCII punctuation: a word of its own
DEF C_DROP = 3    # control characters: removed before anything splits
DEF C_STOP = 4    # starts an added token not matched here, or a character not in the table: to HF
DEF C_ADDED = 5   # starts an added token matched here; where none matches, its class is in `base`
DEF MAX_ADDED = 64  # added tokens matched here, at most
DEF C_UTF8 = 6    # the first byte of a non-ASCII character: its class is in the character table
DEF MAX_REP = 9   # bytes of a table character's normalized form, at most (a Bengali vowel sign's NFD: 6)
DEF MAX_WORD = 255  # longest max_input_chars_per_word taken (HF's default is 100)

cdef inline uint64_t _hash(uint8_t flag, const uint8_t* s, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = 14695981039346656037ULL ^ flag  # FNV-1a, the flag first
    cdef Py_ssize_t i
    h *= 1099511628211ULL
    for i in range(n):
        h ^= s[i]
        h *= 1099511628211ULL
    return h


cdef struct Slot:
    uint64_t hash
    i64 id       # -1: empty
    int32_t off  # the key's bytes: keys[off:off + len]
    uint8_t len
    uint8_t flag


cdef class _Texts:
    """Texts' UTF-8 bytes (NULL for one this path cannot take) and sizes, for a pass without the
    GIL; `held` keeps the strs (and so the bytes) alive. `size`: the bytes of the texts taken,
    `taken`: how many."""
    cdef tuple held
    cdef const char** data
    cdef Py_ssize_t* sizes
    cdef Py_ssize_t n, size, taken

    def __dealloc__(self):
        free(self.data)
        free(self.sizes)


cdef class WordPiece:
    """The vocabulary as an open-addressing table over its pieces (UTF-8 bytes): flag 0 for a
    piece that starts a word, flag 1 for a continuation (the key without its `##`). A slot holds
    its key's hash, so a probe reads one slot (one cache line) and the key's bytes only on a likely
    match: right after an ONNX Runtime run the table is out of cache, and misses are what a text
    costs."""

    cdef bytes keys              # every key's bytes, back to back
    cdef const uint8_t* kp
    cdef Slot* slots
    cdef uint64_t mask
    cdef uint8_t[256] cls
    cdef uint8_t[256] base       # a C_ADDED byte's class where no added token matches
    cdef int n_added
    cdef int[MAX_ADDED] added_off  # the added tokens matched here: added_keys[off:off + n], id
    cdef int[MAX_ADDED] added_n
    cdef i64[MAX_ADDED] added_id
    cdef bytes added_keys
    cdef const uint8_t* akp
    cdef uint32_t n_chars        # the character table covers code points below this
    cdef uint8_t* ucls           # per code point: class, normalized form (ukeys[uoff:uoff + ulen]),
    cdef int32_t* uoff           # and the characters in that form
    cdef uint8_t* ulen
    cdef uint8_t* uchars
    cdef bytes ukeys
    cdef const uint8_t* ukp
    cdef bint lowercase
    cdef i64 unk_id, cls_id, sep_id
    cdef int max_chars, max_piece
    cdef readonly object stop_chars
    cdef readonly str table_chars  # the non-ASCII characters taken, in code point order

    def __init__(self, dict vocab, str prefix, i64 unk_id, i64 cls_id, i64 sep_id, bint lowercase,
                 int max_chars_per_word, str stop_chars="", added=(), chars=()):
        """`added`: (content, id) of the added tokens to match in the raw text (ASCII, at least two
        characters, punctuation first and last); `stop_chars`: characters that send a text to HF;
        `chars`: (code point, class, normalized form) of the non-ASCII characters taken here, the
        class one of "word" (its form joins the word), "space", "punct" (a word of its own),
        "drop" (removed)."""
        if not 0 < max_chars_per_word <= MAX_WORD:
            raise ValueError(f"max_chars_per_word={max_chars_per_word} is outside 1..{MAX_WORD}")
        added = sorted(added, key=lambda a: -len(a[0]))  # longest first: HF's leftmost-longest match
        if len(added) > MAX_ADDED:
            raise ValueError(f"{len(added)} added tokens to match; at most {MAX_ADDED}")
        entries = []
        for piece, token_id in vocab.items():
            if not piece:
                continue
            entries.append((0, piece.encode(), token_id))
            if prefix and piece.startswith(prefix) and len(piece) > len(prefix):
                entries.append((1, piece[len(prefix):].encode(), token_id))
        size = 1
        while size < 2 * len(entries) + 2:
            size *= 2
        self.mask = size - 1
        self.keys = b"".join(e[1] for e in entries) + b"\0"
        self.kp = <const uint8_t*>(<const char*>self.keys)
        self.slots = <Slot*>calloc(size, sizeof(Slot))
        if self.slots == NULL:
            raise MemoryError()
        cdef Py_ssize_t i
        for i in range(size):
            self.slots[i].id = -1
        self.max_piece = 0
        cdef i64 off = 0
        for flag, key, token_id in entries:
            if len(key) > MAX_WORD:  # a slot's length is a byte; a word of 255 characters may be longer
                raise ValueError(f"a vocabulary piece of {len(key)} bytes; at most {MAX_WORD}")
            self._insert(flag, off, len(key), token_id)
            self.max_piece = max(self.max_piece, len(key))
            off += len(key)
        self.unk_id, self.cls_id, self.sep_id = unk_id, cls_id, sep_id
        self.lowercase = lowercase
        self.max_chars = max_chars_per_word
        self.stop_chars = stop_chars
        cdef int c
        for c in range(256):
            if c >= 128:
                self.cls[c] = C_STOP
            elif c in (9, 10, 13, 32):
                self.cls[c] = C_SPACE
            elif c < 32 or c == 127:
                self.cls[c] = C_DROP
            elif 33 <= c <= 47 or 58 <= c <= 64 or 91 <= c <= 96 or 123 <= c <= 126:
                self.cls[c] = C_PUNCT
            else:
                self.cls[c] = C_WORD
        self.base = self.cls
        self.added_keys = b"".join(t.encode() for t, _ in added)
        self.akp = <const uint8_t*>(<const char*>self.added_keys)
        cdef int off_a = 0
        self.n_added = 0
        for content, token_id in added:
            raw = content.encode()
            if not content.isascii() or len(raw) < 2 or self.base[raw[0]] != C_PUNCT or self.base[raw[len(raw) - 1]] != C_PUNCT:
                raise ValueError(f"added token {content!r} cannot be matched here (ASCII, punctuation at both ends)")
            self.added_off[self.n_added], self.added_n[self.n_added] = off_a, len(raw)
            self.added_id[self.n_added] = token_id
            self.n_added += 1
            off_a += len(raw)
            self.cls[raw[0]] = C_ADDED
        # A stop character is one byte's class in ASCII, and otherwise left out of the table.
        self._char_table([e for e in chars if chr(e[0]) not in stop_chars])
        for ch in stop_chars:
            if ord(ch) < 128:
                self.cls[ord(ch)] = C_STOP

    cdef _char_table(self, chars):
        kinds = {"word": C_WORD, "space": C_SPACE, "punct": C_PUNCT, "drop": C_DROP}
        chars = sorted(chars)
        self.table_chars = "".join(chr(cp) for cp, _, _ in chars)
        self.n_chars = max((cp for cp, _, _ in chars), default=-1) + 1
        if not self.n_chars:
            return
        self.ucls = <uint8_t*>malloc(self.n_chars)
        self.uoff = <int32_t*>calloc(self.n_chars, sizeof(int32_t))
        self.ulen = <uint8_t*>calloc(self.n_chars, 1)
        self.uchars = <uint8_t*>calloc(self.n_chars, 1)
        if self.ucls == NULL or self.uoff == NULL or self.ulen == NULL or self.uchars == NULL:
            raise MemoryError()
        cdef uint32_t cp
        for cp in range(self.n_chars):
            self.ucls[cp] = C_STOP
        forms, off = [], 0
        for cp, kind, form in chars:
            raw = form.encode()
            if cp < 128 or kind not in kinds or len(raw) > MAX_REP or len(form) > len(chr(cp).encode()) or \
                    (kind in ("word", "punct")) != bool(form) or (kind == "punct" and len(form) != 1):
                raise ValueError(f"character table entry {cp:#x} {kind} {form!r} cannot be taken here")
            self.ucls[cp], self.uoff[cp], self.ulen[cp], self.uchars[cp] = kinds[kind], off, len(raw), len(form)
            forms.append(raw)
            off += len(raw)
        self.ukeys = b"".join(forms) + b"\0"
        self.ukp = <const uint8_t*>(<const char*>self.ukeys)
        cdef int c
        for c in range(128, 256):
            if self.cls[c] == C_STOP:
                self.cls[c] = C_UTF8

    def __dealloc__(self):
        free(self.slots)
        free(self.ucls)
        free(self.uoff)
        free(self.ulen)
        free(self.uchars)

    cdef void _insert(self, uint8_t flag, i64 off, int32_t n, i64 token_id):
        cdef uint64_t h = _hash(flag, self.kp + off, n)
        cdef uint64_t slot = h & self.mask
        while self.slots[slot].id >= 0:
            if self._holds(&self.slots[slot], h, flag, self.kp + off, n):
                return  # a key twice (cannot happen in a vocab dict): keep the first
            slot = (slot + 1) & self.mask
        self.slots[slot].hash, self.slots[slot].id, self.slots[slot].off = h, token_id, off
        self.slots[slot].len, self.slots[slot].flag = n, flag

    cdef inline bint _holds(self, const Slot* e, uint64_t h, uint8_t flag, const uint8_t* s,
                            Py_ssize_t n) noexcept nogil:
        return e.hash == h and e.len == n and e.flag == flag and memcmp(self.kp + e.off, s, n) == 0

    cdef inline i64 _find(self, uint8_t flag, const uint8_t* s, Py_ssize_t n) noexcept nogil:
        cdef uint64_t h = _hash(flag, s, n)
        cdef uint64_t slot = h & self.mask
        while self.slots[slot].id >= 0:
            if self._holds(&self.slots[slot], h, flag, s, n):
                return self.slots[slot].id
            slot = (slot + 1) & self.mask
        return -1

    cdef Py_ssize_t _word(self, const uint8_t* w, Py_ssize_t n, Py_ssize_t chars, i64* out) noexcept nogil:
        """WordPiece over one word of n bytes and `chars` characters (HF's greedy longest match
        first): the pieces written to out, or one [UNK] where the word is too long or some part of
        it matches no piece. (An end inside a character never matches: every key is whole UTF-8.)"""
        cdef Py_ssize_t start = 0, end, k = 0
        cdef i64 found
        cdef uint8_t flag
        if chars > self.max_chars:
            out[0] = self.unk_id
            return 1
        while start < n:
            flag = 1 if start > 0 else 0
            end = n if n - start <= self.max_piece else start + self.max_piece
            found = -1
            while end > start:
                found = self._find(flag, w + start, end - start)
                if found >= 0:
                    break
                end -= 1
            if found < 0:
                out[0] = self.unk_id
                return 1
            out[k] = found
            k += 1
            start = end
        return k

    cdef int _added_at(self, const uint8_t* s, Py_ssize_t n, i64* token_id) noexcept nogil:
        """The length of the longest added token s starts with (its id in *token_id), or 0."""
        cdef int j
        for j in range(self.n_added):  # longest first
            if self.added_n[j] <= n and memcmp(self.akp + self.added_off[j], s, self.added_n[j]) == 0:
                token_id[0] = self.added_id[j]
                return self.added_n[j]
        return 0

    cdef Py_ssize_t _text(self, const uint8_t* s, Py_ssize_t n, i64* out) noexcept nogil:
        """Pieces of one UTF-8 text into out (room for n); -1 where the text must go to HF."""
        cdef uint8_t[MAX_REP * (MAX_WORD + 2)] word
        cdef Py_ssize_t i = 0, wb = 0, wc = 0, k = 0, step
        cdef uint8_t c, kind, low
        cdef int matched
        cdef i64 token_id = 0
        cdef const uint8_t* form  # what the character adds to a word: its normalized bytes
        cdef Py_ssize_t form_n, form_c
        cdef uint32_t cp
        while i <= n:
            matched, step = 0, 1
            if i < n:
                c = s[i]
                kind = self.cls[c]
                low = c + 32 if self.lowercase and 65 <= c <= 90 else c
                form, form_n, form_c = &low, 1, 1
                if kind == C_ADDED:
                    matched = self._added_at(s + i, n - i, &token_id)
                    kind = self.base[c]
                elif kind == C_UTF8:
                    if c >= 0xF0:
                        return -1  # beyond the table (which stops below U+10000)
                    elif c >= 0xE0:
                        step = 3
                    elif c >= 0xC2:
                        step = 2
                    else:
                        return -1  # not a first byte
                    if i + step > n:
                        return -1
                    cp = ((c & 0x1F) << 6 | (s[i + 1] & 0x3F)) if step == 2 else \
                        ((c & 0x0F) << 12 | (s[i + 1] & 0x3F) << 6 | (s[i + 2] & 0x3F))
                    if cp >= self.n_chars:
                        return -1
                    kind = self.ucls[cp]
                    form, form_n, form_c = self.ukp + self.uoff[cp], self.ulen[cp], self.uchars[cp]
                if kind == C_WORD:
                    if wc <= self.max_chars:  # past that, the word is [UNK] whatever follows
                        memcpy(word + wb, form, form_n)
                        wb += form_n
                    wc += form_c
                    i += step
                    continue
                if kind == C_DROP:
                    i += step
                    continue
                if kind == C_STOP:
                    return -1
            else:
                kind = C_SPACE
            if wc:
                k += self._word(word, wb, wc, out + k)
                wb = wc = 0
            if matched:  # an added token: one id, and the text goes on after it
                out[k] = token_id
                k += 1
                step = matched
            elif kind == C_PUNCT:
                k += self._word(form, form_n, form_c, out + k)
            i += step
        return k

    cdef Py_ssize_t _one(self, const uint8_t* s, Py_ssize_t n, i64 budget, bint left, i64* out,
                         uint8_t* cut) noexcept nogil:
        """One text as [CLS] pieces [SEP] into out (room for n + 2), cut to `budget` tokens from the
        right (or the left, setting *cut): its length, or -1 where it must go to HF."""
        cdef Py_ssize_t keep = budget - 2 if budget >= 2 else 0
        cdef Py_ssize_t k = self._text(s, n, out + 1)
        if k < 0:
            return -1
        if k > keep:
            cut[0] = 1
            if left:
                memmove(out + 1, out + 1 + k - keep, keep * sizeof(i64))
            k = keep
        out[0] = self.cls_id
        out[k + 1] = self.sep_id
        return k + 2

    cdef Py_ssize_t _pair(self, const i64* q, Py_ssize_t kq, const uint8_t* s, Py_ssize_t n, i64 budget,
                          bint left, i64* out, i64* types, uint8_t* cut) noexcept nogil:
        """[CLS] query [SEP] document [SEP] into out (room for kq + n + 3) from the query's kq pieces and
        the document's text, both cut as HF's longest_first cuts a pair to `budget` tokens (from the
        right, or the left): the shorter keeps up to half the room, the longer the rest. types gets 0
        over [CLS] query [SEP] and 1 after. Its length, or -1 where the document must go to HF."""
        cdef Py_ssize_t room = budget - 3 if budget > 3 else 0
        cdef Py_ssize_t kd = self._text(s, n, out + kq + 2)
        cdef Py_ssize_t n1 = kq, n2, short, lng, i
        if kd < 0:
            return -1
        n2 = kd
        if kq + kd > room:
            cut[0] = 1
            short = kq if kq <= kd else kd
            lng = short if short > room else (short if short > room - short else room - short)
            if short + lng > room:
                short = room // 2
                lng = short + room % 2
            n1, n2 = (short, lng) if kq <= kd else (lng, short)
            n1 = n1 if n1 < kq else kq
            n2 = n2 if n2 < kd else kd
        memmove(out + n1 + 2, out + kq + 2 + (kd - n2 if left else 0), n2 * sizeof(i64))
        memcpy(out + 1, q + (kq - n1 if left else 0), n1 * sizeof(i64))
        out[0] = self.cls_id
        out[n1 + 1] = self.sep_id
        out[n1 + n2 + 2] = self.sep_id
        for i in range(n1 + 2):
            types[i] = 0
        for i in range(n1 + 2, n1 + n2 + 3):
            types[i] = 1
        return n1 + n2 + 3

    cdef const char* _utf8(self, text, Py_ssize_t* size):
        """The str's UTF-8 bytes (an ASCII str's own, no copy; others' are kept by the str once
        made), or NULL where this path cannot take it (not a str; non-ASCII with no character
        table; lone surrogates, which have no UTF-8)."""
        if not PyUnicode_Check(text):
            return NULL
        if PyUnicode_IS_COMPACT_ASCII(text):
            return PyUnicode_AsUTF8AndSize(text, size)
        if not self.n_chars:
            return NULL
        try:
            return PyUnicode_AsUTF8AndSize(text, size)
        except UnicodeEncodeError:
            return NULL

    def encode_one(self, text, i64 budget, bint left):
        """One text: (ids as int64 [CLS] pieces [SEP], truncated), or None where it must go to HF."""
        cdef Py_ssize_t size = 0, length
        cdef const char* data
        cdef i64[::1] ids
        cdef uint8_t cut = 0
        data = self._utf8(text, &size)
        if data == NULL:
            return None
        arr = np.empty(size + 2, dtype=np.int64)
        ids = arr
        with nogil:
            length = self._one(<const uint8_t*>data, size, budget, left, &ids[0], &cut)
        if length < 0:
            return None
        return arr[:length], bool(cut)

    def encode(self, list texts, i64 budget, bint left):
        """Tokenize `texts` as [CLS] pieces [SEP], cut to `budget` tokens from the right (or the
        left): (ids of all texts back to back as int64, offsets [len + 1], truncated flags as
        bool). A text that must go to HF has no ids: offsets[i + 1] == offsets[i] (any other text
        has at least its two special tokens)."""
        cdef _Texts t = self._texts(texts)
        ids = np.empty(max(t.size + 2 * t.taken, 1), dtype=np.int64)
        offsets = np.empty(t.n + 1, dtype=np.int64)
        cut = np.zeros(t.n, dtype=np.uint8)
        self._encode_all(t.data, t.sizes, t.n, budget, left, ids, offsets, cut)
        return ids, offsets, cut.view(np.bool_)

    cdef _Texts _texts(self, list texts):
        """The texts' UTF-8 (see _utf8), gathered for a pass without the GIL."""
        cdef _Texts t = _Texts()
        cdef Py_ssize_t i, size
        t.held = tuple(texts)
        t.n = len(t.held)
        t.data = <const char**>malloc(max(t.n, 1) * sizeof(char*))
        t.sizes = <Py_ssize_t*>malloc(max(t.n, 1) * sizeof(Py_ssize_t))
        if t.data == NULL or t.sizes == NULL:
            raise MemoryError()
        for i in range(t.n):
            size = 0
            t.data[i] = self._utf8(t.held[i], &size)
            t.sizes[i] = size
            if t.data[i] != NULL:
                t.size += size
                t.taken += 1
        return t

    cdef void _encode_all(self, const char** data, Py_ssize_t* sizes, Py_ssize_t n, i64 budget, bint left,
                          i64[::1] ids, i64[::1] offsets, uint8_t[::1] cut):
        cdef Py_ssize_t i, pos = 0, length
        with nogil:
            offsets[0] = 0
            for i in range(n):
                if data[i] != NULL:
                    length = self._one(<const uint8_t*>data[i], sizes[i], budget, left, &ids[pos], &cut[i])
                    if length > 0:
                        pos += length
                offsets[i + 1] = pos

    def encode_pairs(self, query, list documents, i64 budget, bint left):
        """(query, document) pairs as [CLS] query [SEP] document [SEP], cut to `budget` tokens as HF's
        longest_first cuts a pair: (ids back to back as int64, type ids likewise, offsets [len + 1],
        truncated flags as bool), or None where the query must go to HF. A document that must go to
        HF has no ids (offsets[i + 1] == offsets[i])."""
        cdef Py_ssize_t qsize = 0, kq
        cdef const char* qdata = self._utf8(query, &qsize)
        if qdata == NULL:
            return None
        q = np.empty(max(qsize, 1), dtype=np.int64)
        cdef i64[::1] qv = q
        with nogil:
            kq = self._text(<const uint8_t*>qdata, qsize, &qv[0])
        if kq < 0:
            return None
        cdef _Texts t = self._texts(documents)
        total = max(t.size + (kq + 3) * t.taken, 1)
        ids = np.empty(total, dtype=np.int64)
        types = np.empty(total, dtype=np.int64)
        offsets = np.empty(t.n + 1, dtype=np.int64)
        cut = np.zeros(t.n, dtype=np.uint8)
        self._pairs_all(&qv[0], kq, t.data, t.sizes, t.n, budget, left, ids, types, offsets, cut)
        return ids, types, offsets, cut.view(np.bool_)

    cdef void _pairs_all(self, const i64* q, Py_ssize_t kq, const char** data, Py_ssize_t* sizes, Py_ssize_t n,
                         i64 budget, bint left, i64[::1] ids, i64[::1] types, i64[::1] offsets, uint8_t[::1] cut):
        cdef Py_ssize_t i, pos = 0, length
        with nogil:
            offsets[0] = 0
            for i in range(n):
                if data[i] != NULL:
                    length = self._pair(q, kq, <const uint8_t*>data[i], sizes[i], budget, left, &ids[pos],
                                        &types[pos], &cut[i])
                    if length > 0:
                        pos += length
                offsets[i + 1] = pos
