/* eurotron.data._native: the per-batch byte loops of eurotron-prepare in one or two passes.
 *
 * Each function reproduces, bit for bit, a numpy implementation in eurotron/data/filters (dedup.py,
 * pii.py) or eurotron/data/native.py, which stay the reference and the fallback. Python allocates
 * the output arrays and passes them as writable buffers; everything is checked here before a byte
 * is written, and the pure loops run without the GIL. Plain C and the stable buffer protocol only,
 * so a C compiler is all it takes to build. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------- buffers */

typedef struct {
    Py_buffer views[16];
    int count;
} Buffers;

static void release_all(Buffers *b) {
    for (int i = 0; i < b->count; i++) PyBuffer_Release(&b->views[i]);
    b->count = 0;
}

/* The item format must be an integer or bool one: an 8-byte float array passed by mistake would
 * otherwise pass the size check. */
static int integer_format(const char *format) {
    if (format == NULL) return 1;  /* plain bytes-like */
    while (*format && strchr("@=<>!|", *format)) format++;
    return format[0] && strchr("bBhHiIlLqQnN?c", format[0]) && format[1] == '\0';
}

/* A C-contiguous buffer of `itemsize`-byte integers; its data and element count. */
static int get(Buffers *b, PyObject *obj, Py_ssize_t itemsize, int writable, const char *name, void **data,
               Py_ssize_t *len) {
    Py_buffer *view = &b->views[b->count];
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    b->count++;
    if (view->itemsize != itemsize || !integer_format(view->format)) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd-byte integer items, got format '%s' of %zd bytes", name,
                     itemsize, view->format ? view->format : "B", view->itemsize);
        return -1;
    }
    *data = view->buf;
    *len = view->len / itemsize;
    return 0;
}

static int check_len(Py_ssize_t len, Py_ssize_t needed, const char *name) {
    if (len < needed) {
        PyErr_Format(PyExc_ValueError, "%s: %zd items, need at least %zd", name, len, needed);
        return -1;
    }
    return 0;
}

/* Cumulative text ends: non-decreasing, from 0, the last one the buffer's size. */
static int check_ends(const int64_t *ends, Py_ssize_t n, Py_ssize_t size, const char *name) {
    int64_t last = 0;
    for (Py_ssize_t t = 0; t < n; t++) {
        if (ends[t] < last) {
            PyErr_Format(PyExc_ValueError, "%s: decreasing at text %zd", name, t);
            return -1;
        }
        last = ends[t];
    }
    if (last != size) {
        PyErr_Format(PyExc_ValueError, "%s: the last end is %lld, the buffer holds %zd bytes", name,
                     (long long)last, size);
        return -1;
    }
    return 0;
}

/* --------------------------------------------------------------------------------------- words */

/* Word bytes (dedup.py's _WORD_BYTES): ASCII letters and digits, every byte >= 0x80. */
static uint8_t WORD[256];

static void init_tables(void) {
    for (int c = 0; c < 256; c++)
        WORD[c] = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c >= 0x80;
}

/* Branch-free and vectorisable (the table lookup in word_layout is neither). */
static inline int is_word(uint8_t c) {
    return (c >= 0x80) | ((uint8_t)(c - '0') < 10) | ((uint8_t)((c | 0x20) - 'a') < 26);
}

/* The size of `clean` and the number of words for `raw` (which ends with a separator). Byte
 * counters per lane over blocks of 255 x 64 bytes, so that the compiler vectorises the loop. */
static void count_words(const uint8_t *raw, Py_ssize_t size, Py_ssize_t *clean_size, Py_ssize_t *words) {
    Py_ssize_t starts = size ? is_word(raw[0]) : 0, bytes = starts, p = 1;
    while (p < size) {
        Py_ssize_t stop = size - p > 255 * 64 ? p + 255 * 64 : size;
        uint8_t lane_starts[64] = {0}, lane_bytes[64] = {0};
        for (; p + 64 <= stop; p += 64)
            for (int i = 0; i < 64; i++) {
                uint8_t w = (uint8_t)is_word(raw[p + i]);
                lane_starts[i] += w & (uint8_t)!is_word(raw[p + i - 1]);
                lane_bytes[i] += w;
            }
        for (int i = 0; i < 64; i++) starts += lane_starts[i], bytes += lane_bytes[i];
        for (; p < stop; p++) {
            int w = is_word(raw[p]);
            starts += w & !is_word(raw[p - 1]);
            bytes += w;
        }
    }
    *clean_size = bytes + starts;  /* each word's bytes and the space after it */
    *words = starts;
}

/* word_count(raw) -> (clean size, words): what word_layout needs, so Python can allocate exactly
 * (an upper bound costs page faults on every batch: malloc hands oversized blocks back to the OS). */
static PyObject *word_count(PyObject *self, PyObject *args) {
    PyObject *o_raw;
    if (!PyArg_ParseTuple(args, "O:word_count", &o_raw)) return NULL;
    Buffers b = {.count = 0};
    const uint8_t *raw;
    Py_ssize_t size, clean_size, words;
    if (get(&b, o_raw, 1, 0, "raw", (void **)&raw, &size)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    count_words(raw, size, &clean_size, &words);
    Py_END_ALLOW_THREADS
    release_all(&b);
    return Py_BuildValue("nn", clean_size, words);
}

/* word_layout(raw, text_ends, clean, word_starts, word_ends, per_text, first_word)
 * WordBatch.of after the encoding: `raw` is the texts joined by "\n" plus a final "\n", `text_ends`
 * their cumulative ends in it (each "\n" included). `clean` and the word arrays need one item more
 * than word_count says (the loop writes one ahead). */
static PyObject *word_layout(PyObject *self, PyObject *args) {
    PyObject *o[7];
    if (!PyArg_ParseTuple(args, "OOOOOOO:word_layout", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6]))
        return NULL;
    Buffers b = {.count = 0};
    const uint8_t *raw;
    const int64_t *ends;
    uint8_t *clean;
    int64_t *starts, *wends, *per, *first;
    Py_ssize_t size, n, lc, ls, le, lp, lf, clean_size, nwords;
    if (get(&b, o[0], 1, 0, "raw", (void **)&raw, &size) || get(&b, o[1], 8, 0, "text_ends", (void **)&ends, &n) ||
        get(&b, o[2], 1, 1, "clean", (void **)&clean, &lc) || get(&b, o[3], 8, 1, "word_starts", (void **)&starts, &ls) ||
        get(&b, o[4], 8, 1, "word_ends", (void **)&wends, &le) || get(&b, o[5], 8, 1, "per_text", (void **)&per, &lp) ||
        get(&b, o[6], 8, 1, "first_word", (void **)&first, &lf) || check_len(lp, n, "per_text") ||
        check_len(lf, n, "first_word") || check_ends(ends, n, size, "text_ends"))
        goto fail;
    if (size && is_word(raw[size - 1])) {  /* every word must end inside the buffer */
        PyErr_SetString(PyExc_ValueError, "raw: must end with a separator byte");
        goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    count_words(raw, size, &clean_size, &nwords);
    Py_END_ALLOW_THREADS
    if (check_len(lc, clean_size + 1, "clean") || check_len(ls, nwords + 1, "word_starts") ||
        check_len(le, nwords + 1, "word_ends"))
        goto fail;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t k = 0, m = 0, p = 0;
    int64_t total = 0;
    int prev = 0;
    for (Py_ssize_t t = 0; t < n; t++) {
        int64_t words = 0;
        /* Branch-free: a branch per word boundary would mispredict twice a word. */
        for (Py_ssize_t e = ends[t]; p < e; p++) {
            uint8_t c = raw[p];
            int w = WORD[c];
            clean[k] = w ? (uint8_t)(c | 0x20) : (uint8_t)' ';  /* k <= clean_size, m <= nwords */
            k += w | prev;  /* a word byte, or the separator that ends a word */
            wends[m] = k - 1;
            m += prev & !w;
            words += w & !prev;
            prev = w;
        }
        per[t] = words;
        first[t] = total;
        total += words;
    }
    for (Py_ssize_t i = 0; i < m; i++) starts[i] = i ? wends[i - 1] + 1 : 0;
    Py_END_ALLOW_THREADS
    release_all(&b);
    Py_RETURN_NONE;
fail:
    release_all(&b);
    return NULL;
}

/* Texts' words: for each text with words, 0 <= its words' starts <= ends <= len(clean), both
 * non-decreasing (what the shingle hash and the exact key assume); the longest span is returned. */
static int check_words(const int64_t *starts, const int64_t *ends, Py_ssize_t nwords, const int64_t *per,
                       const int64_t *first, Py_ssize_t n, Py_ssize_t nclean, int64_t *max_span,
                       int64_t *max_words) {
    *max_span = 0;
    *max_words = 0;
    for (Py_ssize_t t = 0; t < n; t++) {
        if (per[t] < 0 || (per[t] && (first[t] < 0 || first[t] > nwords - per[t]))) {
            PyErr_Format(PyExc_ValueError, "text %zd: words [%lld, +%lld) outside the %zd words", t,
                         (long long)first[t], (long long)per[t], nwords);
            return -1;
        }
        if (!per[t]) continue;
        for (int64_t i = first[t]; i < first[t] + per[t]; i++) {
            int ordered = starts[i] <= ends[i] && (i == first[t] || (starts[i] >= starts[i - 1] && ends[i] >= ends[i - 1]));
            if (!ordered || starts[i] < 0 || ends[i] > nclean) {
                PyErr_Format(PyExc_ValueError, "word %lld of text %zd: bad bounds [%lld, %lld)", (long long)i, t,
                             (long long)starts[i], (long long)ends[i]);
                return -1;
            }
        }
        int64_t span = ends[first[t] + per[t] - 1] - starts[first[t]];
        if (span > *max_span) *max_span = span;
        if (per[t] > *max_words) *max_words = per[t];
    }
    return 0;
}

/* ------------------------------------------------------------------------------------- minhash */

#define P32 0x01000193u

static inline uint32_t mix32(uint32_t z) {  /* dedup.py's _mix32 */
    z = (z ^ (z >> 16)) * 0x85EBCA6Bu;
    z = (z ^ (z >> 13)) * 0xC2B2AE35u;
    return z ^ (z >> 16);
}

static inline uint64_t mix64(uint64_t z) {  /* dedup.py's _mix */
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* `bin` if it is filled, else `donor`, without a branch. */
static inline Py_ssize_t pick(Py_ssize_t bin, const uint8_t *filled, Py_ssize_t donor) {
    Py_ssize_t mask = -(Py_ssize_t)filled[bin];
    return (bin & mask) | (donor & ~mask);
}

/* band_keys(clean, word_starts, word_ends, per_text, first_word, shingle_words, seed32, num_perm,
 *           probes, band_salt, rows, keys, has)
 * MinHasher.band_keys on a WordBatch, fused per text: shingle hashes -> one-permutation MinHash with
 * densification -> band keys, so no per-shingle array exists. `probes` is MinHasher.probes (int64,
 * num_perm x probes per bin), `keys` uint64 [texts x bands] and `has` bool [texts] are filled. */
static PyObject *band_keys(PyObject *self, PyObject *args) {
    PyObject *o_clean, *o_ws, *o_we, *o_per, *o_first, *o_probes, *o_salt, *o_keys, *o_has;
    Py_ssize_t shingle, bins, rows;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "OOOOOnKnOOnOO:band_keys", &o_clean, &o_ws, &o_we, &o_per, &o_first, &shingle,
                          &seed, &bins, &o_probes, &o_salt, &rows, &o_keys, &o_has))
        return NULL;
    Buffers b = {.count = 0};
    const uint8_t *clean;
    const int64_t *ws, *we, *per, *first, *probes;
    const uint64_t *salt;
    uint64_t *keys;
    uint8_t *has;
    Py_ssize_t nclean, nw, nwe, n, nf, nprobes_total, bands, nkeys, nhas;
    uint32_t *pw = NULL, *inv = NULL, *prefix = NULL, *sig = NULL;
    uint8_t *filled = NULL;
    if (get(&b, o_clean, 1, 0, "clean", (void **)&clean, &nclean) ||
        get(&b, o_ws, 8, 0, "word_starts", (void **)&ws, &nw) || get(&b, o_we, 8, 0, "word_ends", (void **)&we, &nwe) ||
        get(&b, o_per, 8, 0, "per_text", (void **)&per, &n) || get(&b, o_first, 8, 0, "first_word", (void **)&first, &nf) ||
        get(&b, o_probes, 8, 0, "probes", (void **)&probes, &nprobes_total) ||
        get(&b, o_salt, 8, 0, "band_salt", (void **)&salt, &bands) || get(&b, o_keys, 8, 1, "keys", (void **)&keys, &nkeys) ||
        get(&b, o_has, 1, 1, "has", (void **)&has, &nhas))
        goto fail;
    if (nw != nwe || nf != n) {
        PyErr_SetString(PyExc_ValueError, "word_starts/word_ends or per_text/first_word differ in length");
        goto fail;
    }
    if (shingle < 1 || bins < 1 || rows < 1 || bands > bins / rows || seed > 0xFFFFFFFFull) {
        PyErr_Format(PyExc_ValueError, "bad parameters: shingle_words=%zd num_perm=%zd bands=%zd rows=%zd seed=%llu",
                     shingle, bins, bands, rows, seed);
        goto fail;
    }
    if (nprobes_total % bins) {
        PyErr_SetString(PyExc_ValueError, "probes: not num_perm rows");
        goto fail;
    }
    Py_ssize_t nprobes = nprobes_total / bins;
    for (Py_ssize_t i = 0; i < nprobes_total; i++)
        if (probes[i] < 0 || probes[i] >= bins) {
            PyErr_Format(PyExc_ValueError, "probes: %lld outside [0, %zd)", (long long)probes[i], bins);
            goto fail;
        }
    if (check_len(nkeys, n * bands, "keys") || check_len(nhas, n, "has")) goto fail;
    int64_t max_span, max_words;
    if (check_words(ws, we, nw, per, first, n, nclean, &max_span, &max_words)) goto fail;
    if ((uint64_t)max_span + 1 > PY_SSIZE_T_MAX / sizeof(uint32_t)) {
        PyErr_NoMemory();
        goto fail;
    }
    /* Positions count from each text's first word: the hash of bytes [s, e) is
     * (prefix[e] - prefix[s]) * P^-s whatever the origin, so tables stay as long as the longest text. */
    size_t table = (size_t)max_span + 1;
    pw = malloc(table * sizeof(uint32_t));
    inv = malloc(table * sizeof(uint32_t));
    prefix = malloc(table * sizeof(uint32_t));
    sig = malloc((size_t)bins * sizeof(uint32_t));
    filled = malloc((size_t)bins);
    if (!pw || !inv || !prefix || !sig || !filled) {
        PyErr_NoMemory();
        goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    uint32_t p_inv = P32;  /* Newton's iteration for P^-1 mod 2^32: each step doubles the correct bits */
    for (int i = 0; i < 5; i++) p_inv *= 2u - P32 * p_inv;
    pw[0] = inv[0] = 1u;
    for (size_t i = 1; i < table; i++) {
        pw[i] = pw[i - 1] * P32;
        inv[i] = inv[i - 1] * p_inv;
    }
    for (Py_ssize_t t = 0; t < n; t++) {
        uint64_t *out = keys + t * bands;
        int64_t words = per[t];
        has[t] = words > 0;
        if (!words) {
            for (Py_ssize_t j = 0; j < bands; j++) out[j] = 0;
            continue;
        }
        int64_t w0 = first[t], last = w0 + words - 1, base = ws[w0], span = we[last] - base;
        const uint8_t *text = clean + base;
        uint32_t acc = 0;
        prefix[0] = 0;
        for (int64_t i = 0; i < span; i++) prefix[i + 1] = acc += ((uint32_t)text[i] + 1u) * pw[i];
        for (Py_ssize_t j = 0; j < bins; j++) {
            sig[j] = 0xFFFFFFFFu;
            filled[j] = 0;
        }
        int64_t count = words - shingle + 1 > 1 ? words - shingle + 1 : 1;
        for (int64_t k = 0; k < count; k++) {
            int64_t sw = w0 + k, ew = sw + shingle - 1 < last ? sw + shingle - 1 : last;
            int64_t s = ws[sw] - base, e = we[ew] - base;
            uint32_t h = mix32(((prefix[e] - prefix[s]) * inv[s]) ^ (uint32_t)(e - s));
            uint32_t m = mix32(h ^ (uint32_t)seed);
            Py_ssize_t bin = (Py_ssize_t)(((uint64_t)m * (uint64_t)bins) >> 32);
            sig[bin] = m < sig[bin] ? m : sig[bin];
            filled[bin] = 1;
        }
        /* Densification (MinHasher._donors): an empty bin copies the first filled bin along its probe
         * sequence, else the next filled bin to its right, circularly. Only bins filled by a shingle
         * are donors, so bins can be resolved in place, in any order. The first probes are tried
         * without branches (half the bins are empty: a branch per bin would mispredict). */
        for (Py_ssize_t j = 0; j < bins; j++) {
            const int64_t *probe = probes + j * nprobes;
            Py_ssize_t donor = -1, a = 0;
            if (nprobes >= 4) {  /* the last pick wins: probe 0 before 1 before 2 before 3 */
                for (int i = 3; i >= 0; i--) donor = pick((Py_ssize_t)probe[i], filled, donor);
                a = 4;
            }
            donor = pick(j, filled, donor);
            if (donor < 0) {
                for (; a < nprobes && donor < 0; a++)
                    if (filled[probe[a]]) donor = (Py_ssize_t)probe[a];
                for (Py_ssize_t c = j + 1; donor < 0 && c < bins; c++)
                    if (filled[c]) donor = c;
                for (Py_ssize_t c = 0; donor < 0 && c < j; c++)
                    if (filled[c]) donor = c;
            }
            sig[j] = sig[donor];  /* a text with words has a filled bin */
        }
        /* Band keys, the bands' mixing chains interleaved (each step waits on the last one). */
        for (Py_ssize_t band = 0; band < bands; band++) out[band] = salt[band];
        for (Py_ssize_t r = 0; r < rows; r++)
            for (Py_ssize_t band = 0; band < bands; band++) out[band] = mix64(out[band] ^ (uint64_t)sig[band * rows + r]);
    }
    Py_END_ALLOW_THREADS
    free(pw), free(inv), free(prefix), free(sig), free(filled);
    release_all(&b);
    Py_RETURN_NONE;
fail:
    free(pw), free(inv), free(prefix), free(sig), free(filled);
    release_all(&b);
    return NULL;
}

/* --------------------------------------------------------------------------------- exact keys */

/* BLAKE2b (RFC 7693) with an 8-byte digest and no key: hashlib.blake2b(data, digest_size=8). */
static const uint64_t B2B_IV[8] = {
    0x6A09E667F3BCC908ull, 0xBB67AE8584CAA73Bull, 0x3C6EF372FE94F82Bull, 0xA54FF53A5F1D36F1ull,
    0x510E527FADE682D1ull, 0x9B05688C2B3E6C1Full, 0x1F83D9ABFB41BD6Bull, 0x5BE0CD19137E2179ull};

static const uint8_t B2B_SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4}, {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13}, {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11}, {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5}, {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};

#define ROTR64(x, y) (((x) >> (y)) | ((x) << (64 - (y))))
#define B2B_G(a, b, c, d, x, y)          \
    do {                                 \
        v[a] = v[a] + v[b] + (x);        \
        v[d] = ROTR64(v[d] ^ v[a], 32);  \
        v[c] = v[c] + v[d];              \
        v[b] = ROTR64(v[b] ^ v[c], 24);  \
        v[a] = v[a] + v[b] + (y);        \
        v[d] = ROTR64(v[d] ^ v[a], 16);  \
        v[c] = v[c] + v[d];              \
        v[b] = ROTR64(v[b] ^ v[c], 63);  \
    } while (0)

static inline uint64_t load64(const uint8_t *p) {  /* little-endian on any host */
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
           (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
}

static void b2b_compress(uint64_t h[8], const uint8_t block[128], uint64_t counter, int last) {
    uint64_t v[16], m[16];
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = B2B_IV[i];
    }
    v[12] ^= counter;  /* the counter's high word stays 0: a Py_ssize_t length fits 64 bits */
    if (last) v[14] = ~v[14];
    for (int i = 0; i < 16; i++) m[i] = load64(block + 8 * i);
    for (int i = 0; i < 12; i++) {
        const uint8_t *s = B2B_SIGMA[i];
        B2B_G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        B2B_G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        B2B_G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        B2B_G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        B2B_G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        B2B_G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        B2B_G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        B2B_G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

/* The digest's 8 bytes read as a little-endian integer, i.e. h[0]. */
static uint64_t blake2b_64(const uint8_t *data, size_t len) {
    uint64_t h[8];
    memcpy(h, B2B_IV, sizeof h);
    h[0] ^= 0x01010000ull ^ 8u;  /* fanout 1, depth 1, no key, 8-byte digest */
    uint64_t counter = 0;
    while (len > 128) {
        counter += 128;
        b2b_compress(h, data, counter, 0);
        data += 128;
        len -= 128;
    }
    uint8_t block[128] = {0};
    memcpy(block, data, len);
    counter += len;
    b2b_compress(h, block, counter, 1);
    return h[0];
}

/* exact_keys(clean, word_starts, word_ends, per_text, first_word, out): BLAKE2b-64 of each text's
 * words as they stand in `clean` (single spaces, no trailing one); texts without words are left
 * to the caller (their key hashes the raw bytes). */
static PyObject *exact_keys(PyObject *self, PyObject *args) {
    PyObject *o[6];
    if (!PyArg_ParseTuple(args, "OOOOOO:exact_keys", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5])) return NULL;
    Buffers b = {.count = 0};
    const uint8_t *clean;
    const int64_t *ws, *we, *per, *first;
    uint64_t *out;
    Py_ssize_t nclean, nw, nwe, n, nf, nout;
    int64_t max_span, max_words;
    if (get(&b, o[0], 1, 0, "clean", (void **)&clean, &nclean) || get(&b, o[1], 8, 0, "word_starts", (void **)&ws, &nw) ||
        get(&b, o[2], 8, 0, "word_ends", (void **)&we, &nwe) || get(&b, o[3], 8, 0, "per_text", (void **)&per, &n) ||
        get(&b, o[4], 8, 0, "first_word", (void **)&first, &nf) || get(&b, o[5], 8, 1, "out", (void **)&out, &nout) ||
        check_len(nout, n, "out"))
        goto fail;
    if (nw != nwe || nf != n) {
        PyErr_SetString(PyExc_ValueError, "word_starts/word_ends or per_text/first_word differ in length");
        goto fail;
    }
    if (check_words(ws, we, nw, per, first, n, nclean, &max_span, &max_words)) goto fail;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t t = 0; t < n; t++) {
        if (!per[t]) continue;
        int64_t a = ws[first[t]], z = we[first[t] + per[t] - 1];
        out[t] = blake2b_64(clean + a, (size_t)(z - a));
    }
    Py_END_ALLOW_THREADS
    release_all(&b);
    Py_RETURN_NONE;
fail:
    release_all(&b);
    return NULL;
}

/* --------------------------------------------------------------------------------------- PII */

#define IS_DIGIT(c) ((uint8_t)((c) - '0') < 10)
#define IS_UPPER(c) ((uint8_t)((c) - 'A') < 26)

/* Whether a 32-byte block holds a digit or a colon (the bytes 0x30-0x3A): a loop the compiler
 * vectorises, so that the many blocks without either are skipped at a fraction of a cycle a byte. */
static inline int digit_or_colon(const uint8_t *block) {
    uint8_t any = 0;
    for (int i = 0; i < 32; i++) any |= (uint8_t)(block[i] - '0') < 11;
    return any;
}

/* The text holding byte `p`, moving on from text `t` (positions only grow). */
static inline Py_ssize_t text_of(const int64_t *ends, Py_ssize_t t, Py_ssize_t p) {
    while (ends[t] <= p) t++;
    return t;
}

/* Flags the texts holding `needle` where `then_digit` is 0 or a digit follows it (memchr: rare bytes). */
static void flag_byte(const uint8_t *data, Py_ssize_t size, const int64_t *ends, uint8_t needle, int then_digit,
                      uint8_t *flags) {
    Py_ssize_t t = 0;
    const uint8_t *at = memchr(data, needle, (size_t)size);
    while (at) {
        Py_ssize_t p = at - data;
        if (!then_digit || (p + 1 < size && IS_DIGIT(data[p + 1]))) flags[t = text_of(ends, t, p)] = 1;
        at = p + 1 < size ? memchr(at + 1, needle, (size_t)(size - p - 1)) : NULL;
    }
}

/* pii_gates(data, ends, out): pii._gates' necessary conditions over the texts' concatenated UTF-8
 * bytes (windows span text boundaries, as there). `out` is bool [6 x texts]: email, iban, ipv4,
 * ipv6, "+" then a digit, and a "0" followed by 6 more digits within 32 bytes (the phone label
 * check stays in Python). The windows keep the last few positions in rings. */
static PyObject *pii_gates(PyObject *self, PyObject *args) {
    PyObject *o_data, *o_ends, *o_out;
    if (!PyArg_ParseTuple(args, "OOO:pii_gates", &o_data, &o_ends, &o_out)) return NULL;
    Buffers b = {.count = 0};
    const uint8_t *data;
    const int64_t *ends;
    uint8_t *out;
    Py_ssize_t size, n, nout;
    if (get(&b, o_data, 1, 0, "data", (void **)&data, &size) || get(&b, o_ends, 8, 0, "ends", (void **)&ends, &n) ||
        get(&b, o_out, 1, 1, "out", (void **)&out, &nout) || check_len(nout, 6 * n, "out") ||
        check_ends(ends, n, size, "ends"))
        goto fail;
    Py_BEGIN_ALLOW_THREADS
    memset(out, 0, (size_t)(6 * n));
    uint8_t *iban = out + n, *ipv4 = out + 2 * n, *ipv6 = out + 3 * n, *run = out + 5 * n;
    flag_byte(data, size, ends, '@', 0, out);
    flag_byte(data, size, ends, '+', 1, out + 4 * n);
    /* Rings: the last 7 digits, 3 digit-dot-digit dots, 6 colons (position, text, is "0"). */
    int64_t dpos[8], cpos[8], tpos[4];
    Py_ssize_t ddoc[8], cdoc[8], tdoc[4];
    uint8_t dzero[8];
    uint64_t nd = 0, nc = 0, nt = 0;
    Py_ssize_t t = 0;
    for (Py_ssize_t p = 0; p < size; p++) {
        while ((p & 31) == 0 && size - p >= 32 && !digit_or_colon(data + p)) p += 32;
        if (p >= size) break;
        uint8_t c = data[p], next = p + 1 < size ? data[p + 1] : 0;
        if (IS_DIGIT(c)) {
            t = text_of(ends, t, p);
            if (IS_DIGIT(next) && p >= 2 && IS_UPPER(data[p - 1]) && IS_UPPER(data[p - 2])) iban[t] = 1;
            dpos[nd & 7] = p, ddoc[nd & 7] = t, dzero[nd & 7] = c == '0';
            if (nd >= 6) {
                uint64_t j = (nd - 6) & 7;  /* the 7th digit from a "0" lies within 32 bytes of it */
                if (dzero[j] && p < dpos[j] + 32) run[ddoc[j]] = 1;
            }
            nd++;
            if (next == '.' && p + 2 < size && IS_DIGIT(data[p + 2])) {
                Py_ssize_t q = p + 1;  /* later positions lie at q or beyond: t may move on */
                t = text_of(ends, t, q);
                tpos[nt & 3] = q, tdoc[nt & 3] = t;
                if (nt >= 2 && q < tpos[(nt - 2) & 3] + 9) ipv4[tdoc[(nt - 2) & 3]] = 1;
                nt++;
            }
        } else if (c == ':') {
            t = text_of(ends, t, p);
            if (next == ':') ipv6[t] = 1;
            cpos[nc & 7] = p, cdoc[nc & 7] = t;
            if (nc >= 5 && p < cpos[(nc - 5) & 7] + 40) ipv6[cdoc[(nc - 5) & 7]] = 1;
            nc++;
        }
    }
    Py_END_ALLOW_THREADS
    release_all(&b);
    Py_RETURN_NONE;
fail:
    release_all(&b);
    return NULL;
}

/* ------------------------------------------------------------------------------------ flatten */

/* One token id as an integer in [0, limit); -1 with an exception set otherwise. */
static long long token_id(PyObject *item, long long vocab, long long limit, Py_ssize_t text) {
    Py_INCREF(item);  /* __index__ may run Python code that drops the list's reference */
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(item, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        Py_DECREF(item);
        return -1;
    }
    if (overflow || v < 0 || v >= limit) {
        if (!overflow && v >= vocab) overflow = 1;
        if (overflow || v < 0)
            PyErr_Format(PyExc_ValueError, "token id %R (text %zd) outside [0, %lld)", item, text, vocab);
        else
            PyErr_Format(PyExc_ValueError, "token id %R (text %zd) does not fit the output's items (< %lld)", item,
                         text, limit);
        Py_DECREF(item);
        return -1;
    }
    Py_DECREF(item);
    return v;
}

/* flatten_ids(ids, eos, vocab_size, out, ends) -> tokens written
 * Every list of `ids` followed by `eos` into `out` (uint16 or uint32 by its item size), the
 * cumulative ends (EOS included) into `ends` (int64). */
static PyObject *flatten_ids(PyObject *self, PyObject *args) {
    PyObject *ids, *o_out, *o_ends, *seqs = NULL;
    long long eos, vocab;
    if (!PyArg_ParseTuple(args, "OLLOO:flatten_ids", &ids, &eos, &vocab, &o_out, &o_ends)) return NULL;
    Buffers b = {.count = 0};
    void *out;
    int64_t *ends;
    Py_ssize_t cap, nends;
    Py_buffer *view = &b.views[0];
    if (PyObject_GetBuffer(o_out, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) return NULL;
    b.count = 1;
    Py_ssize_t itemsize = view->itemsize;
    if ((itemsize != 2 && itemsize != 4) || !integer_format(view->format)) {
        PyErr_Format(PyExc_ValueError, "out: expected uint16 or uint32 items, got format '%s' of %zd bytes",
                     view->format ? view->format : "B", itemsize);
        goto fail;
    }
    out = view->buf;
    cap = view->len / itemsize;
    if (get(&b, o_ends, 8, 1, "ends", (void **)&ends, &nends)) goto fail;
    long long limit = itemsize == 2 ? 65536 : 4294967296LL;
    if (vocab < limit) limit = vocab;
    if (eos < 0 || eos >= limit) {
        PyErr_Format(PyExc_ValueError, "eos id %lld outside [0, %lld)", eos, limit);
        goto fail;
    }
    seqs = PySequence_Fast(ids, "ids: expected a sequence of sequences of ints");
    if (!seqs) goto fail;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seqs), pos = 0;
    if (check_len(nends, n, "ends")) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *seq = PySequence_Fast(PySequence_Fast_GET_ITEM(seqs, i), "ids: expected sequences of ints");
        if (!seq) goto fail;
        /* Size and items are read afresh per id: __index__ of an odd id type could change the list. */
        for (Py_ssize_t j = 0; j < PySequence_Fast_GET_SIZE(seq); j++) {
            long long v = token_id(PySequence_Fast_GET_ITEM(seq, j), vocab, limit, i);
            if (v < 0 || pos + 1 >= cap) {  /* room for this id and the EOS after it */
                if (v >= 0) PyErr_Format(PyExc_ValueError, "out: %zd items, too few for the ids", cap);
                Py_DECREF(seq);
                goto fail;
            }
            if (itemsize == 2)
                ((uint16_t *)out)[pos++] = (uint16_t)v;
            else
                ((uint32_t *)out)[pos++] = (uint32_t)v;
        }
        Py_DECREF(seq);
        if (pos >= cap) {
            PyErr_Format(PyExc_ValueError, "out: %zd items, too few for the ids", cap);
            goto fail;
        }
        if (itemsize == 2)
            ((uint16_t *)out)[pos++] = (uint16_t)eos;
        else
            ((uint32_t *)out)[pos++] = (uint32_t)eos;
        ends[i] = pos;
    }
    Py_DECREF(seqs);
    release_all(&b);
    return PyLong_FromSsize_t(pos);
fail:
    Py_XDECREF(seqs);
    release_all(&b);
    return NULL;
}

/* ------------------------------------------------------------------------------------- strings */

/* join_utf8(texts, separator, ends) -> bytes
 * The UTF-8 of every str in `texts` back to back, each followed by `separator`, and the cumulative
 * ends (separator included) into `ends` (int64): [t.encode() for t in texts] joined, without the
 * intermediate bytes objects. It reads each str's own UTF-8, which CPython keeps on a non-ASCII
 * str once asked (an ASCII str is its UTF-8), so later consumers of the same str (the next call
 * here, SentencePiece) do not encode it again. Lone surrogates raise UnicodeEncodeError, as encode(). */
static PyObject *join_utf8(PyObject *self, PyObject *args) {
    PyObject *texts, *o_ends, *seq = NULL, *out = NULL;
    Py_buffer sep;
    if (!PyArg_ParseTuple(args, "Oy*O:join_utf8", &texts, &sep, &o_ends)) return NULL;
    Buffers b = {.count = 0};
    int64_t *ends;
    Py_ssize_t nends, total = 0;
    if (get(&b, o_ends, 8, 1, "ends", (void **)&ends, &nends)) goto done;
    seq = PySequence_Fast(texts, "texts: expected a sequence of str");
    if (!seq) goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (check_len(nends, n, "ends")) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        Py_ssize_t len;
        if (!PyUnicode_Check(item)) {
            PyErr_Format(PyExc_TypeError, "texts[%zd]: expected str, got %.80s", i, Py_TYPE(item)->tp_name);
            goto done;
        }
        if (!PyUnicode_AsUTF8AndSize(item, &len)) goto done;
        total += len + sep.len;
        ends[i] = total;
    }
    out = PyBytes_FromStringAndSize(NULL, total);
    if (!out) goto done;
    char *dst = PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len;
        const char *utf8 = PyUnicode_AsUTF8AndSize(PySequence_Fast_GET_ITEM(seq, i), &len);  /* kept from above */
        memcpy(dst, utf8, len);
        memcpy(dst + len, sep.buf, sep.len);
        dst += len + sep.len;
    }
done:
    Py_XDECREF(seq);
    PyBuffer_Release(&sep);
    release_all(&b);
    return out;
}

/* nfc_stable(texts, safe, out): out[i] = 1 when texts[i] is certainly its own NFC — every character
 * Latin-1, or in the BMP and marked in `safe` (65536 bits, native.py's _nfc_safe_bitmap), so that
 * unicodedata.normalize can be skipped; 0 when it may not be (the caller normalises). */
static PyObject *nfc_stable(PyObject *self, PyObject *args) {
    PyObject *texts, *o_safe, *o_out, *seq = NULL;
    if (!PyArg_ParseTuple(args, "OOO:nfc_stable", &texts, &o_safe, &o_out)) return NULL;
    Buffers b = {.count = 0};
    const uint8_t *safe;
    uint8_t *out;
    Py_ssize_t nsafe, nout;
    if (get(&b, o_safe, 1, 0, "safe", (void **)&safe, &nsafe) || get(&b, o_out, 1, 1, "out", (void **)&out, &nout) ||
        check_len(nsafe, 65536 / 8, "safe"))
        goto fail;
    seq = PySequence_Fast(texts, "texts: expected a sequence of str");
    if (!seq) goto fail;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (check_len(nout, n, "out")) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyUnicode_Check(item)) {
            PyErr_Format(PyExc_TypeError, "texts[%zd]: expected str, got %.80s", i, Py_TYPE(item)->tp_name);
            goto fail;
        }
        int kind = PyUnicode_KIND(item), stable = kind == PyUnicode_1BYTE_KIND;
        if (kind == PyUnicode_2BYTE_KIND) {
            const Py_UCS2 *chars = PyUnicode_2BYTE_DATA(item);
            Py_ssize_t len = PyUnicode_GET_LENGTH(item), c = 0;
            while (c < len && (safe[chars[c] >> 3] >> (chars[c] & 7) & 1)) c++;
            stable = c == len;
        }
        out[i] = (uint8_t)stable;
    }
    Py_DECREF(seq);
    release_all(&b);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(seq);
    release_all(&b);
    return NULL;
}

/* -------------------------------------------------------------------------------------------- urls */

static int url_label_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
}

static char lower_ascii(char c) { return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c; }

/* split_http_url(url) -> (origin, host, path) or None
 * urls.py's _fast_parse for an ASCII str, without the regex: "http(s)://" (any case), a plain host
 * (labels of letters, digits and "-", one trailing dot allowed), an optional port of 1-5 digits up
 * to 65535, then "/", "?", "#" or the end; None for anything else (the caller's urlsplit path). */
static PyObject *split_http_url(PyObject *self, PyObject *arg) {
    if (!PyUnicode_Check(arg) || !PyUnicode_IS_ASCII(arg)) {
        PyErr_SetString(PyExc_TypeError, "split_http_url: expected an ASCII str");
        return NULL;
    }
    const char *s = (const char *)PyUnicode_1BYTE_DATA(arg);
    Py_ssize_t n = PyUnicode_GET_LENGTH(arg), p = 0;
    if (n < 7 || lower_ascii(s[0]) != 'h' || lower_ascii(s[1]) != 't' || lower_ascii(s[2]) != 't' ||
        lower_ascii(s[3]) != 'p')
        Py_RETURN_NONE;
    p = 4;
    int https = lower_ascii(s[p]) == 's';
    p += https;
    if (p + 3 > n || memcmp(s + p, "://", 3) != 0) Py_RETURN_NONE;
    p += 3;
    Py_ssize_t host_start = p;
    while (p < n && url_label_char(s[p])) p++;
    if (p == host_start) Py_RETURN_NONE;
    while (p + 1 < n && s[p] == '.' && url_label_char(s[p + 1])) {
        p++;
        while (p < n && url_label_char(s[p])) p++;
    }
    Py_ssize_t host_end = p;
    if (p < n && s[p] == '.') p++;
    long port = -1;
    if (p < n && s[p] == ':') {
        Py_ssize_t d = p + 1;
        while (d < n && s[d] >= '0' && s[d] <= '9' && d - p <= 6) d++;
        if (d - p - 1 < 1 || d - p - 1 > 5) Py_RETURN_NONE;
        port = 0;
        for (Py_ssize_t i = p + 1; i < d; i++) port = port * 10 + (s[i] - '0');
        p = d;
    }
    if (p < n && s[p] != '/' && s[p] != '?' && s[p] != '#') Py_RETURN_NONE;
    if (port > 65535) Py_RETURN_NONE;
    Py_ssize_t path_end = p;
    while (path_end < n && s[path_end] != '#') path_end++;
    char host[256], buf[512];
    Py_ssize_t host_len = host_end - host_start;
    if (host_len > 253) Py_RETURN_NONE;  /* longer than any domain name: let urlsplit have it */
    for (Py_ssize_t i = 0; i < host_len; i++) host[i] = lower_ascii(s[host_start + i]);
    int default_port = port < 0 || port == (https ? 443 : 80);
    int origin_len = default_port ? snprintf(buf, sizeof buf, "http%s://%.*s", https ? "s" : "", (int)host_len, host)
                                  : snprintf(buf, sizeof buf, "http%s://%.*s:%ld", https ? "s" : "", (int)host_len,
                                             host, port);
    PyObject *origin = PyUnicode_FromStringAndSize(buf, origin_len);
    PyObject *host_obj = PyUnicode_FromStringAndSize(host, host_len);
    PyObject *path;
    if (path_end == p)
        path = PyUnicode_FromString("/");
    else if (s[p] == '?') {
        PyObject *rest = PyUnicode_FromStringAndSize(s + p, path_end - p);
        path = rest ? PyUnicode_FromFormat("/%U", rest) : NULL;
        Py_XDECREF(rest);
    } else
        path = PyUnicode_FromStringAndSize(s + p, path_end - p);
    PyObject *result = (origin && host_obj && path) ? PyTuple_Pack(3, origin, host_obj, path) : NULL;
    Py_XDECREF(origin);
    Py_XDECREF(host_obj);
    Py_XDECREF(path);
    return result;
}

/* ----------------------------------------------------------------------------------- key sets */

/* Deduplicator's sets of uint64 keys: open addressing with linear probing in a uint64 table of
 * `cap` (a power of two) slots, 0 marking an empty slot, plus one item after them that is 1 when
 * the key 0 itself is in the set. Python sizes the table (dedup.py, KeyTable) so that it never
 * fills up here. */
typedef struct {
    uint64_t *slots;
    uint64_t mask;
    int shift;
} KeySet;

static int key_set(Buffers *b, PyObject *obj, const char *name, KeySet *set) {
    uint64_t *data;
    Py_ssize_t len;
    if (get(b, obj, 8, 1, name, (void **)&data, &len)) return -1;
    Py_ssize_t cap = len - 1;
    if (cap < 2 || (cap & (cap - 1))) {
        PyErr_Format(PyExc_ValueError, "%s: %zd items, expected a power of two (>= 2) plus one", name, len);
        return -1;
    }
    set->slots = data;
    set->mask = (uint64_t)cap - 1;
    set->shift = 64;
    while (cap > 1) cap >>= 1, set->shift--;
    return 0;
}

/* The slot holding `key`, or the empty slot where it belongs (Fibonacci hashing spreads keys
 * that share low bits). */
static inline uint64_t *slot_of(const KeySet *set, uint64_t key) {
    uint64_t at = (key * 0x9E3779B97F4A7C15ULL) >> set->shift;
    while (set->slots[at] != 0 && set->slots[at] != key) at = (at + 1) & set->mask;
    return &set->slots[at];
}

static inline int set_has(const KeySet *set, uint64_t key) {
    return key ? *slot_of(set, key) == key : set->slots[set->mask + 1] != 0;
}

/* 1 when the key was new. */
static inline int set_add(KeySet *set, uint64_t key) {
    if (!key) {
        int added = set->slots[set->mask + 1] == 0;
        set->slots[set->mask + 1] = 1;
        return added;
    }
    uint64_t *slot = slot_of(set, key);
    if (*slot == key) return 0;
    *slot = key;
    return 1;
}

/* set_add_keys(table, keys) -> keys that were new. */
static PyObject *set_add_keys(PyObject *self, PyObject *args) {
    PyObject *o_table, *o_keys;
    if (!PyArg_ParseTuple(args, "OO:set_add_keys", &o_table, &o_keys)) return NULL;
    Buffers b = {.count = 0};
    KeySet set;
    uint64_t *keys;
    Py_ssize_t n, added = 0;
    if (key_set(&b, o_table, "table", &set) || get(&b, o_keys, 8, 0, "keys", (void **)&keys, &n)) {
        release_all(&b);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) added += set_add(&set, keys[i]);
    Py_END_ALLOW_THREADS
    release_all(&b);
    return PyLong_FromSsize_t(added);
}

/* dedup_decide(exact, bands, has_bands, use_exact, use_near, exact_table, band_table, out)
 *   -> (exact keys added, band keys added)
 * Deduplicator.decide, in corpus order: out[i] = 1 when text i's exact key is in the exact set,
 * else 2 when one of its band keys (bands: n x b, row-major) is in the band set, else 0 — and then
 * its keys join the sets, so later texts of the batch see them. */
static PyObject *dedup_decide(PyObject *self, PyObject *args) {
    PyObject *o_exact, *o_bands, *o_has, *o_etab, *o_btab, *o_out;
    int use_exact, use_near;
    if (!PyArg_ParseTuple(args, "OOOppOOO:dedup_decide", &o_exact, &o_bands, &o_has, &use_exact, &use_near, &o_etab,
                          &o_btab, &o_out))
        return NULL;
    Buffers b = {.count = 0};
    uint64_t *exact, *bands;
    uint8_t *has, *out;
    Py_ssize_t n, nbands, nhas, nout, added_exact = 0, added_bands = 0;
    KeySet eset, bset;
    if (get(&b, o_exact, 8, 0, "exact", (void **)&exact, &n) || get(&b, o_bands, 8, 0, "bands", (void **)&bands, &nbands) ||
        get(&b, o_has, 1, 0, "has_bands", (void **)&has, &nhas) || get(&b, o_out, 1, 1, "out", (void **)&out, &nout) ||
        key_set(&b, o_etab, "exact_table", &eset) || key_set(&b, o_btab, "band_table", &bset) ||
        check_len(nhas, n, "has_bands") || check_len(nout, n, "out"))
        goto fail;
    if (n ? nbands % n : nbands) {
        PyErr_Format(PyExc_ValueError, "bands: %zd items are no whole rows for %zd texts", nbands, n);
        goto fail;
    }
    Py_ssize_t width = n ? nbands / n : 0;
    if (!width) use_near = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint64_t *row = bands + i * width;
        int code = 0, near = use_near && has[i];
        if (use_exact && set_has(&eset, exact[i]))
            code = 1;
        else if (near)
            for (Py_ssize_t r = 0; r < width && !code; r++)
                if (set_has(&bset, row[r])) code = 2;
        out[i] = (uint8_t)code;
        if (code) continue;
        if (use_exact) added_exact += set_add(&eset, exact[i]);
        if (near)
            for (Py_ssize_t r = 0; r < width; r++) added_bands += set_add(&bset, row[r]);
    }
    Py_END_ALLOW_THREADS
    release_all(&b);
    return Py_BuildValue("(nn)", added_exact, added_bands);
fail:
    release_all(&b);
    return NULL;
}

/* ------------------------------------------------------------------------------------- module */

static PyMethodDef methods[] = {
    {"word_count", word_count, METH_VARARGS, "(clean size, words) of the joined texts."},
    {"word_layout", word_layout, METH_VARARGS, "WordBatch.of's arrays from the joined texts."},
    {"band_keys", band_keys, METH_VARARGS, "MinHasher.band_keys on a WordBatch."},
    {"exact_keys", exact_keys, METH_VARARGS, "BLAKE2b-64 of each text's words (texts with words)."},
    {"pii_gates", pii_gates, METH_VARARGS, "pii._gates' per-text flags from the joined texts."},
    {"flatten_ids", flatten_ids, METH_VARARGS, "Token id lists, each followed by EOS, into one array."},
    {"nfc_stable", nfc_stable, METH_VARARGS, "Which str are certainly their own NFC."},
    {"split_http_url", split_http_url, METH_O, "urls.py's fast path: (origin, host, path) or None."},
    {"join_utf8", join_utf8, METH_VARARGS, "The UTF-8 of many str, joined, with their cumulative ends."},
    {"set_add_keys", set_add_keys, METH_VARARGS, "Add uint64 keys to a KeyTable's slots; how many were new."},
    {"dedup_decide", dedup_decide, METH_VARARGS, "Deduplicator.decide on KeyTables, in order."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native",
                                    "Per-batch byte loops of eurotron-prepare (see eurotron.data.native).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__native(void) {
    init_tables();
    return PyModule_Create(&module);
}
