/*
 * edgewire.h - a tiny client of the edgewire native wire protocol (v1).
 *
 * One header, C99 (also compiles as C++ for Arduino sketches), no malloc, no
 * dependency beyond <stdint.h>, <stddef.h> and <string.h>. It sends one
 * INFER_REQUEST (one float32 tensor) and reads the INFER_RESPONSE (the first
 * float32 tensor of the answer and `compute_ms`). See docs/protocol.md.
 *
 * Transport is yours: fill an ew_io with send/recv callbacks (an Arduino
 * WiFiClient, lwIP, ...). On Linux/BSD, define EW_POSIX before including this
 * header to get ew_connect_tcp() and ew_posix_io().
 *
 * Memory: an ew_client holds one EW_BUF_SIZE buffer for the answer (define
 * EW_BUF_SIZE before including to change it). Requests are streamed from the
 * caller's floats through a small stack chunk, so the input never needs a
 * second copy. Every length read from the wire is checked against the buffer
 * and the caller's capacities before it is used: a hostile server cannot
 * make this code write out of bounds.
 *
 * All functions are `static`, so the header can be included from several
 * files; unused ones cost nothing.
 */
#ifndef EDGEWIRE_H
#define EDGEWIRE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifndef EW_BUF_SIZE
#define EW_BUF_SIZE 1024 /* the largest answer frame (header + payload) read */
#endif
#ifndef EW_ERROR_TEXT
#define EW_ERROR_TEXT 128 /* room for the agent's error message */
#endif

/* The protocol carries IEEE-754 binary32; this header converts byte order
 * itself (through uint32_t and shifts), so any endianness works. */
typedef char ew_float_must_be_32_bits[(sizeof(float) == 4) ? 1 : -1];

#define EW_HEADER_SIZE 20u
#define EW_VERSION 1u
#define EW_MSG_HELLO 1u
#define EW_MSG_CAPABILITIES 2u
#define EW_MSG_ERROR 5u
#define EW_MSG_INFER_REQUEST 16u
#define EW_MSG_INFER_RESPONSE 17u
#define EW_DTYPE_FLOAT32 6u
#define EW_MAX_NDIM 8u       /* protocol limit on dimensions per tensor */
#define EW_MAX_TENSORS 64u   /* protocol limit on tensors per message */
#define EW_MAX_MODEL_NAME 64 /* the agent's model names are 1-64 characters */
#define EW_MAX_TOKEN 256     /* the longest token ew_hello sends */
#define EW_MAX_CAPABILITIES (1u << 20) /* the largest HELLO answer skipped */

/* Return codes: 0 is success, every failure is negative. */
#define EW_OK 0
#define EW_ERR_ARG (-1)        /* bad argument, or the request does not fit `cap` */
#define EW_ERR_IO (-2)         /* send/recv failed or the peer closed the connection */
#define EW_ERR_TIMEOUT (-3)    /* no answer in time */
#define EW_ERR_FRAME (-4)      /* bad magic, version or reserved field */
#define EW_ERR_CRC (-5)        /* payload does not match its CRC-32 */
#define EW_ERR_TRUNCATED (-6)  /* the data end before a field says they do */
#define EW_ERR_TOO_LARGE (-7)  /* a length or count over a capacity or protocol limit */
#define EW_ERR_MALFORMED (-8)  /* inconsistent payload: byte count, dtype, extra bytes */
#define EW_ERR_REMOTE (-9)     /* the agent answered with an ERROR frame */
#define EW_ERR_UNEXPECTED (-10) /* another message type or request id than expected */

/* ---------------------------------------------------------------- bytes */

static inline uint32_t ew_get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static inline uint16_t ew_get_u16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline void ew_put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline void ew_put_f32(uint8_t *p, float f) {
    uint32_t v;
    memcpy(&v, &f, 4);
    ew_put_u32(p, v);
}

static inline float ew_get_f32(const uint8_t *p) {
    uint32_t v = ew_get_u32(p);
    float f;
    memcpy(&f, &v, 4);
    return f;
}

/* ---------------------------------------------------------------- crc32 */

/* IEEE CRC-32 (the one zlib computes); pass crc = 0 to start, or a previous
 * result to continue. A 16-entry table: 64 bytes of flash, 2 steps a byte. */
static inline uint32_t ew_crc32(const uint8_t *data, size_t len, uint32_t crc) {
    static const uint32_t nibble[16] = {
        0x00000000u, 0x1db71064u, 0x3b6e20c8u, 0x26d930acu, 0x76dc4190u, 0x6b6b51f4u,
        0x4db26158u, 0x5005713cu, 0xedb88320u, 0xf00f9344u, 0xd6d6a3e8u, 0xcb61b38cu,
        0x9b64c2b0u, 0x86d3d2d4u, 0xa00ae278u, 0xbdbdf21cu};
    size_t i;
    crc = ~crc;
    for (i = 0; i < len; i++) {
        crc ^= data[i];
        crc = (crc >> 4) ^ nibble[crc & 15u];
        crc = (crc >> 4) ^ nibble[crc & 15u];
    }
    return ~crc;
}

/* ------------------------------------------------------------- requests */

/* The 20-byte frame header (CRC left 0 for the caller) and the payload's meta length. */
static inline void ewi_frame_head(uint8_t *out, uint8_t type, uint32_t request_id,
                                  uint32_t payload_len, uint32_t meta_len) {
    out[0] = 'E';
    out[1] = 'W';
    out[2] = EW_VERSION;
    out[3] = type;
    memset(out + 4, 0, 4); /* flags, reserved */
    ew_put_u32(out + 8, request_id);
    ew_put_u32(out + 12, payload_len);
    ew_put_u32(out + 16, 0); /* CRC, filled in by the caller */
    ew_put_u32(out + 20, meta_len);
}

/* strlen(s) if `s` is 1..max printable ASCII chars without quotes or backslashes
 * (nothing here escapes JSON), else 0. */
static inline size_t ewi_plain_len(const char *s, size_t max) {
    size_t len = strlen(s), i;
    if (len == 0 || len > max) return 0;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') return 0;
    }
    return len;
}

/* Writes `open` `value` `"}` (the meta JSON) at `out`; returns the bytes written. */
static inline size_t ewi_put_meta(uint8_t *out, const char *open, size_t open_len,
                                  const char *value, size_t value_len) {
    memcpy(out, open, open_len);
    memcpy(out + open_len, value, value_len);
    out[open_len + value_len] = '"';
    out[open_len + value_len + 1] = '}';
    return open_len + value_len + 2;
}

/* Writes the header (CRC still 0) and the payload up to the tensor data into
 * `out` and returns its length, or 0 when `model` is not a plain name or the
 * sizes do not fit. `cap` must be at least EW_HEADER_SIZE + 40 + strlen(model). */
static inline size_t ewi_request_prefix(uint8_t *out, size_t cap, uint32_t request_id,
                                        const char *model, uint32_t n_features,
                                        uint32_t batch, uint32_t *data_bytes) {
    static const char json_open[] = "{\"model\":\"";
    size_t name_len, meta_len, n, i;
    uint64_t nbytes = (uint64_t)batch * n_features; /* < 2^64: cannot overflow */
    if (out == NULL || model == NULL || nbytes == 0 || nbytes > 0x3fffffffu) return 0;
    nbytes *= 4u;
    name_len = ewi_plain_len(model, EW_MAX_MODEL_NAME);
    if (name_len == 0) return 0;
    meta_len = sizeof(json_open) - 1 + name_len + 2;
    n = EW_HEADER_SIZE + 4 + meta_len + 2 + 4 + 8 + 8;
    if (n > cap || nbytes > 0xffffffffu - (uint64_t)(n - EW_HEADER_SIZE)) return 0;
    *data_bytes = (uint32_t)nbytes;
    ewi_frame_head(out, EW_MSG_INFER_REQUEST, request_id, (uint32_t)(n - EW_HEADER_SIZE + nbytes),
                   (uint32_t)meta_len);
    i = 24 + ewi_put_meta(out + 24, json_open, sizeof(json_open) - 1, model, name_len);
    out[i++] = 1; /* one tensor */
    out[i++] = 0;
    out[i++] = EW_DTYPE_FLOAT32;
    out[i++] = 2; /* ndim: [batch, n_features] */
    out[i++] = 0;
    out[i++] = 0;
    ew_put_u32(out + i, batch);
    ew_put_u32(out + i + 4, n_features);
    ew_put_u32(out + i + 8, (uint32_t)nbytes);
    ew_put_u32(out + i + 12, 0); /* high half of the u64 byte count */
    return n;
}

/* The whole INFER_REQUEST frame for `batch` rows of `n_features` floats
 * (`input` holds batch * n_features values) into `out`. Returns its length,
 * or 0 if it does not fit `cap` or an argument is bad. */
static inline size_t ew_build_infer_request(uint8_t *out, size_t cap, uint32_t request_id,
                                            const char *model, const float *input,
                                            uint32_t n_features, uint32_t batch) {
    uint32_t data_bytes = 0, i;
    size_t n = ewi_request_prefix(out, cap, request_id, model, n_features, batch, &data_bytes);
    if (n == 0 || input == NULL || data_bytes > cap - n) return 0;
    for (i = 0; i < data_bytes / 4u; i++) ew_put_f32(out + n + 4u * i, input[i]);
    n += data_bytes;
    ew_put_u32(out + 16, ew_crc32(out + EW_HEADER_SIZE, n - EW_HEADER_SIZE, 0));
    return n;
}

/* The HELLO frame that gives the agent its token (an agent with a token
 * answers inference only on a connection that sent it). The token must be
 * printable ASCII without quotes or backslashes (no JSON escaping here).
 * Returns the frame's length, or 0 if it does not fit `cap` or the token is bad. */
static inline size_t ew_build_hello(uint8_t *out, size_t cap, uint32_t request_id,
                                    const char *token) {
    static const char json_open[] = "{\"client\":\"c\",\"token\":\"";
    size_t token_len, meta_len, n, i;
    if (out == NULL || token == NULL) return 0;
    token_len = ewi_plain_len(token, EW_MAX_TOKEN);
    if (token_len == 0) return 0;
    meta_len = sizeof(json_open) - 1 + token_len + 2;
    n = EW_HEADER_SIZE + 4 + meta_len + 2;
    if (n > cap) return 0;
    ewi_frame_head(out, EW_MSG_HELLO, request_id, (uint32_t)(n - EW_HEADER_SIZE),
                   (uint32_t)meta_len);
    i = 24 + ewi_put_meta(out + 24, json_open, sizeof(json_open) - 1, token, token_len);
    out[i++] = 0; /* no tensors */
    out[i++] = 0;
    ew_put_u32(out + 16, ew_crc32(out + EW_HEADER_SIZE, n - EW_HEADER_SIZE, 0));
    return n;
}

/* -------------------------------------------------------------- answers */

/* Checks a frame header: 0 and the fields, or EW_ERR_FRAME. */
static inline int ew_parse_header(const uint8_t *h, uint8_t *type, uint32_t *request_id,
                                  uint32_t *payload_len, uint32_t *crc) {
    if (h[0] != 'E' || h[1] != 'W' || h[2] != EW_VERSION || h[6] != 0 || h[7] != 0)
        return EW_ERR_FRAME;
    *type = h[3];
    *request_id = ew_get_u32(h + 8);
    *payload_len = ew_get_u32(h + 12);
    *crc = ew_get_u32(h + 16);
    return EW_OK;
}

/* Checks a whole frame in `frame[0..len)`: header, exact length, CRC. */
static inline int ew_check_frame(const uint8_t *frame, size_t len, uint8_t *type,
                                 uint32_t *request_id, const uint8_t **payload,
                                 uint32_t *payload_len) {
    uint32_t crc;
    int rc;
    if (frame == NULL || len < EW_HEADER_SIZE) return EW_ERR_TRUNCATED;
    rc = ew_parse_header(frame, type, request_id, payload_len, &crc);
    if (rc != EW_OK) return rc;
    if (*payload_len > len - EW_HEADER_SIZE) return EW_ERR_TRUNCATED;
    if (*payload_len < len - EW_HEADER_SIZE) return EW_ERR_MALFORMED;
    *payload = frame + EW_HEADER_SIZE;
    if (ew_crc32(*payload, *payload_len, 0) != crc) return EW_ERR_CRC;
    return EW_OK;
}

/* The meta JSON of a payload, its length checked against the payload. */
static inline int ewi_meta(const uint8_t *p, uint32_t len, const uint8_t **meta,
                           uint32_t *meta_len) {
    if (len < 4) return EW_ERR_TRUNCATED;
    *meta_len = ew_get_u32(p);
    if (*meta_len > 64u * 1024u) return EW_ERR_TOO_LARGE;
    if (*meta_len > len - 4) return EW_ERR_TRUNCATED;
    *meta = p + 4;
    return EW_OK;
}

/* Finds `"key":` in a flat JSON object; returns the offset of its value or -1.
 * A tiny scan, no JSON library: inside a JSON string a quote is escaped, so
 * the quoted key followed by a colon only matches a real key. */
static inline long ewi_find_key(const uint8_t *meta, uint32_t len, const char *key) {
    size_t k = strlen(key);
    uint32_t i, j;
    for (i = 0; i + k + 2 <= len; i++) {
        if (meta[i] != '"' || meta[i + k + 1] != '"' || memcmp(meta + i + 1, key, k) != 0)
            continue;
        j = (uint32_t)(i + k + 2);
        while (j < len && (meta[j] == ' ' || meta[j] == '\t' || meta[j] == '\n' || meta[j] == '\r'))
            j++;
        if (j < len && meta[j] == ':') {
            j++;
            while (j < len && (meta[j] == ' ' || meta[j] == '\t' || meta[j] == '\n' || meta[j] == '\r'))
                j++;
            return (long)j;
        }
    }
    return -1;
}

/* The JSON number of `key` in `meta`: 0 and *value, or -1 if absent or not a
 * number. Handles what Python's json writes: 12, -0.5, 1.5e-05. */
static inline int ew_meta_number(const uint8_t *meta, uint32_t len, const char *key,
                                 float *value) {
    long at = ewi_find_key(meta, len, key);
    uint32_t i;
    double v = 0.0, scale = 1.0;
    int neg = 0, digits = 0, e10 = 0, e10_neg = 0;
    if (at < 0) return -1;
    i = (uint32_t)at;
    if (i < len && meta[i] == '-') neg = 1, i++;
    for (; i < len && meta[i] >= '0' && meta[i] <= '9'; i++, digits++) v = v * 10.0 + (meta[i] - '0');
    if (i < len && meta[i] == '.')
        for (i++; i < len && meta[i] >= '0' && meta[i] <= '9'; i++, digits++)
            v += (meta[i] - '0') * (scale *= 0.1);
    if (digits == 0) return -1;
    if (i < len && (meta[i] == 'e' || meta[i] == 'E')) {
        i++;
        if (i < len && (meta[i] == '-' || meta[i] == '+')) e10_neg = meta[i++] == '-';
        for (; i < len && meta[i] >= '0' && meta[i] <= '9'; i++)
            if (e10 < 400) e10 = e10 * 10 + (meta[i] - '0');
        while (e10-- > 0) v = e10_neg ? v / 10.0 : v * 10.0;
    }
    *value = (float)(neg ? -v : v);
    return 0;
}

/* Copies the JSON string of `key` into `out` (always NUL-terminated, cut to
 * `cap`). Escapes are decoded; non-ASCII \u escapes become '?'. 0 or -1. */
static inline int ew_meta_string(const uint8_t *meta, uint32_t len, const char *key, char *out,
                                 size_t cap) {
    long at = ewi_find_key(meta, len, key);
    uint32_t i;
    size_t n = 0;
    if (cap == 0) return -1;
    out[0] = '\0';
    if (at < 0 || (uint32_t)at >= len || meta[at] != '"') return -1;
    for (i = (uint32_t)at + 1; i < len && meta[i] != '"'; i++) {
        char c = (char)meta[i];
        if (c == '\\' && i + 1 < len) {
            c = (char)meta[++i];
            if (c == 'n') c = '\n';
            else if (c == 't') c = '\t';
            else if (c == 'r') c = '\r';
            else if (c == 'b' || c == 'f') c = ' ';
            else if (c == 'u') {
                uint32_t code = 0, k;
                if (i + 4 >= len) break;
                for (k = 1; k <= 4; k++) {
                    uint8_t h = meta[i + k];
                    code = code * 16u + (uint32_t)(h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
                }
                i += 4;
                c = (code >= 0x20 && code < 0x7f) ? (char)code : '?';
            }
        }
        if (n + 1 < cap) out[n++] = c;
    }
    out[n] = '\0';
    return 0;
}

/* Reads one tensor header at p[*pos..len): its element count (checked against
 * `max_elems`) and the offset of its data; advances *pos past the data. */
static inline int ewi_tensor(const uint8_t *p, uint32_t len, uint32_t *pos, uint32_t max_elems,
                             uint8_t *dtype, uint32_t *n_elems, uint32_t *data_at) {
    static const uint8_t sizes[11] = {0, 1, 1, 4, 8, 2, 4, 8, 1, 2, 2};
    uint32_t i = *pos, ndim, d;
    uint64_t elems = 1, nbytes_hi, nbytes;
    if (len - i < 4) return EW_ERR_TRUNCATED;
    *dtype = p[i];
    ndim = p[i + 1];
    if (*dtype == 0 || *dtype > 10 || p[i + 2] != 0 || p[i + 3] != 0) return EW_ERR_MALFORMED;
    if (ndim > EW_MAX_NDIM) return EW_ERR_TOO_LARGE;
    i += 4;
    if (len - i < 4u * ndim + 8u) return EW_ERR_TRUNCATED;
    for (d = 0; d < ndim; d++, i += 4) {
        uint32_t dim = ew_get_u32(p + i);
        /* Checked at each step, so the product can never overflow. */
        if (dim != 0 && elems > max_elems / dim) elems = (uint64_t)max_elems + 1;
        else elems *= dim;
    }
    if (elems > max_elems) return EW_ERR_TOO_LARGE;
    nbytes = ew_get_u32(p + i);
    nbytes_hi = ew_get_u32(p + i + 4);
    i += 8;
    if (nbytes_hi != 0 || nbytes != elems * sizes[*dtype]) return EW_ERR_MALFORMED;
    if (nbytes > len - i) return EW_ERR_TRUNCATED;
    *n_elems = (uint32_t)elems;
    *data_at = i;
    *pos = i + (uint32_t)nbytes;
    return EW_OK;
}

/* Parses an INFER_RESPONSE frame in frame[0..len): the first tensor (float32)
 * into out[0..out_cap), its element count into *out_n, and `compute_ms` from
 * the meta (-1 if absent) into *compute_ms (may be NULL). Returns EW_OK, or
 * EW_ERR_REMOTE for an ERROR frame (read it with ew_parse_error), or another
 * negative code. Nothing is written past out[out_cap - 1]. */
static inline int ew_parse_infer_response(const uint8_t *frame, size_t len, uint32_t expect_id,
                                          float *out, uint32_t out_cap, uint32_t *out_n,
                                          float *compute_ms) {
    const uint8_t *p, *meta;
    uint32_t plen, meta_len, id, pos, count, k, n = 0, at = 0;
    uint8_t type, dtype = 0;
    float ms = -1.0f;
    int rc = ew_check_frame(frame, len, &type, &id, &p, &plen);
    if (rc != EW_OK) return rc;
    if (type == EW_MSG_ERROR) return EW_ERR_REMOTE;
    if (type != EW_MSG_INFER_RESPONSE || id != expect_id) return EW_ERR_UNEXPECTED;
    rc = ewi_meta(p, plen, &meta, &meta_len);
    if (rc != EW_OK) return rc;
    pos = 4 + meta_len;
    if (plen - pos < 2) return EW_ERR_TRUNCATED;
    count = ew_get_u16(p + pos);
    pos += 2;
    if (count == 0) return EW_ERR_MALFORMED;
    if (count > EW_MAX_TENSORS) return EW_ERR_TOO_LARGE;
    for (k = 0; k < count; k++) {
        uint32_t elems, data_at;
        /* Only the first tensor is kept; the others are checked and skipped. */
        rc = ewi_tensor(p, plen, &pos, k == 0 ? out_cap : 0xffffffffu, &dtype, &elems, &data_at);
        if (rc != EW_OK) return rc;
        if (k == 0) {
            if (dtype != EW_DTYPE_FLOAT32) return EW_ERR_MALFORMED;
            n = elems;
            at = data_at;
        }
    }
    if (pos != plen) return EW_ERR_MALFORMED; /* nothing may follow the last tensor */
    if (n > 0 && out == NULL) return EW_ERR_ARG;
    for (k = 0; k < n; k++) out[k] = ew_get_f32(p + at + 4u * k);
    if (out_n != NULL) *out_n = n;
    ew_meta_number(meta, meta_len, "compute_ms", &ms);
    if (compute_ms != NULL) *compute_ms = ms;
    return EW_OK;
}

/* The `code` and `message` of an ERROR frame (either buffer may be NULL). */
static inline int ew_parse_error(const uint8_t *frame, size_t len, char *code, size_t code_cap,
                                 char *message, size_t message_cap) {
    const uint8_t *p, *meta;
    uint32_t plen, meta_len, id;
    uint8_t type;
    int rc = ew_check_frame(frame, len, &type, &id, &p, &plen);
    if (rc != EW_OK) return rc;
    if (type != EW_MSG_ERROR) return EW_ERR_UNEXPECTED;
    rc = ewi_meta(p, plen, &meta, &meta_len);
    if (rc != EW_OK) return rc;
    if (code != NULL) ew_meta_string(meta, meta_len, "code", code, code_cap);
    if (message != NULL) ew_meta_string(meta, meta_len, "message", message, message_cap);
    return EW_OK;
}

/* ------------------------------------------------------------ transport */

/* Your transport. Both calls wait at most `timeout_ms`. `send` returns the
 * bytes it sent (> 0); `recv` the bytes it read (> 0) or 0 when the peer
 * closed; both return EW_ERR_TIMEOUT on timeout and another negative on
 * error. `now_ms` (optional, may be NULL) is a millisecond clock such as
 * millis(): with it `timeout_ms` (> 0) bounds the whole answer, without it
 * each call. */
typedef struct ew_io {
    int (*send)(void *ctx, const uint8_t *data, size_t len, uint32_t timeout_ms);
    int (*recv)(void *ctx, uint8_t *data, size_t len, uint32_t timeout_ms);
    uint32_t (*now_ms)(void);
    void *ctx;
    uint32_t timeout_ms;
} ew_io;

typedef struct ew_client {
    ew_io io;
    uint32_t next_id;
    char error_code[24];              /* of the last ERROR frame */
    char error[EW_ERROR_TEXT];        /* its message, for the user */
    uint8_t buf[EW_BUF_SIZE];         /* the last answer frame */
} ew_client;

static inline void ew_client_init(ew_client *c, ew_io io) {
    c->io = io;
    c->next_id = 1;
    c->error_code[0] = '\0';
    c->error[0] = '\0';
}

static inline int ewi_send_all(ew_io *io, const uint8_t *data, size_t len) {
    while (len > 0) {
        int n = io->send(io->ctx, data, len, io->timeout_ms);
        if (n <= 0 || (size_t)n > len) return n == EW_ERR_TIMEOUT ? n : EW_ERR_IO;
        data += n;
        len -= (size_t)n;
    }
    return EW_OK;
}

static inline int ewi_recv_exact(ew_io *io, uint8_t *data, size_t len, uint32_t start) {
    while (len > 0) {
        uint32_t wait = io->timeout_ms;
        int n;
        if (io->now_ms != NULL) {
            uint32_t spent = io->now_ms() - start; /* unsigned: survives wrap-around */
            if (spent >= io->timeout_ms) return EW_ERR_TIMEOUT;
            wait = io->timeout_ms - spent;
        }
        n = io->recv(io->ctx, data, len, wait);
        if (n == EW_ERR_TIMEOUT) return n;
        if (n <= 0 || (size_t)n > len) return EW_ERR_IO;
        data += n;
        len -= (size_t)n;
    }
    return EW_OK;
}

/* One request, one answer on the client's connection: `batch` rows of
 * `n_features` floats in, the first output tensor out (see
 * ew_parse_infer_response). On EW_ERR_REMOTE, c->error and c->error_code hold
 * the agent's message; the connection stays usable. After any other error,
 * close the connection: the byte stream may be out of step. */
static inline int ew_infer(ew_client *c, const char *model, const float *input,
                           uint32_t n_features, uint32_t batch, float *out, uint32_t out_cap,
                           uint32_t *out_n, float *compute_ms) {
    uint8_t head[EW_HEADER_SIZE + 48 + EW_MAX_MODEL_NAME], chunk[256];
    uint32_t data_bytes = 0, id = c->next_id, got_id, plen, crc, i, start = 0;
    uint8_t type;
    size_t n, k;
    int rc;
    c->error_code[0] = '\0';
    c->error[0] = '\0';
    n = ewi_request_prefix(head, sizeof(head), id, model, n_features, batch, &data_bytes);
    if (n == 0 || input == NULL) return EW_ERR_ARG;
    c->next_id = id == 0xffffffffu ? 1 : id + 1;
    /* The CRC goes in the header, before the data: one pass to compute it,
     * one to send, both through the same small chunk (no copy of the input). */
    crc = ew_crc32(head + EW_HEADER_SIZE, n - EW_HEADER_SIZE, 0);
    for (i = 0; i < data_bytes / 4u; i += k) {
        for (k = 0; k < sizeof(chunk) / 4 && i + k < data_bytes / 4u; k++)
            ew_put_f32(chunk + 4 * k, input[i + k]);
        crc = ew_crc32(chunk, 4 * k, crc);
    }
    ew_put_u32(head + 16, crc);
    rc = ewi_send_all(&c->io, head, n);
    for (i = 0; rc == EW_OK && i < data_bytes / 4u; i += k) {
        for (k = 0; k < sizeof(chunk) / 4 && i + k < data_bytes / 4u; k++)
            ew_put_f32(chunk + 4 * k, input[i + k]);
        rc = ewi_send_all(&c->io, chunk, 4 * k);
    }
    if (rc != EW_OK) return rc;

    if (c->io.now_ms != NULL) start = c->io.now_ms();
    rc = ewi_recv_exact(&c->io, c->buf, EW_HEADER_SIZE, start);
    if (rc != EW_OK) return rc;
    rc = ew_parse_header(c->buf, &type, &got_id, &plen, &crc);
    if (rc != EW_OK) return rc;
    /* Checked before a single payload byte is read. */
    if (plen > sizeof(c->buf) - EW_HEADER_SIZE) return EW_ERR_TOO_LARGE;
    rc = ewi_recv_exact(&c->io, c->buf + EW_HEADER_SIZE, plen, start);
    if (rc != EW_OK) return rc;
    rc = ew_parse_infer_response(c->buf, EW_HEADER_SIZE + plen, id, out, out_cap, out_n,
                                 compute_ms);
    if (rc == EW_ERR_REMOTE)
        ew_parse_error(c->buf, EW_HEADER_SIZE + plen, c->error_code, sizeof(c->error_code),
                       c->error, sizeof(c->error));
    return rc;
}

/* Gives the agent its token: call once after connecting, before ew_infer.
 * The agent's CAPABILITIES answer is read through the client's buffer in
 * pieces and dropped (it may be longer than the buffer). A wrong token is
 * EW_ERR_REMOTE with c->error_code "auth"; the agent then closes the
 * connection. */
static inline int ew_hello(ew_client *c, const char *token) {
    uint8_t frame[EW_HEADER_SIZE + 40 + EW_MAX_TOKEN];
    uint32_t id = c->next_id, got_id, plen, crc, seen = 0, missing, start = 0;
    uint8_t type;
    size_t n = ew_build_hello(frame, sizeof(frame), id, token);
    int rc;
    c->error_code[0] = '\0';
    c->error[0] = '\0';
    if (n == 0) return EW_ERR_ARG;
    c->next_id = id == 0xffffffffu ? 1 : id + 1;
    rc = ewi_send_all(&c->io, frame, n);
    if (rc != EW_OK) return rc;
    if (c->io.now_ms != NULL) start = c->io.now_ms();
    rc = ewi_recv_exact(&c->io, c->buf, EW_HEADER_SIZE, start);
    if (rc != EW_OK) return rc;
    rc = ew_parse_header(c->buf, &type, &got_id, &plen, &crc);
    if (rc != EW_OK) return rc;
    if (type == EW_MSG_ERROR) {
        if (plen > sizeof(c->buf) - EW_HEADER_SIZE) return EW_ERR_TOO_LARGE;
        rc = ewi_recv_exact(&c->io, c->buf + EW_HEADER_SIZE, plen, start);
        if (rc != EW_OK) return rc;
        rc = ew_parse_error(c->buf, EW_HEADER_SIZE + plen, c->error_code, sizeof(c->error_code),
                            c->error, sizeof(c->error));
        return rc == EW_OK ? EW_ERR_REMOTE : rc;
    }
    if (type != EW_MSG_CAPABILITIES || got_id != id) return EW_ERR_UNEXPECTED;
    if (plen > EW_MAX_CAPABILITIES) return EW_ERR_TOO_LARGE;
    for (missing = plen; missing > 0;) {
        uint32_t k = missing < sizeof(c->buf) ? missing : (uint32_t)sizeof(c->buf);
        rc = ewi_recv_exact(&c->io, c->buf, k, start);
        if (rc != EW_OK) return rc;
        seen = ew_crc32(c->buf, k, seen);
        missing -= k;
    }
    return seen == crc ? EW_OK : EW_ERR_CRC;
}

/* A short English name for a return code. */
static inline const char *ew_strerror(int rc) {
    switch (rc) {
    case EW_OK: return "ok";
    case EW_ERR_ARG: return "bad argument or request too large for the buffer";
    case EW_ERR_IO: return "connection failed or closed by the peer";
    case EW_ERR_TIMEOUT: return "timed out";
    case EW_ERR_FRAME: return "not an edgewire v1 frame";
    case EW_ERR_CRC: return "payload fails its CRC-32";
    case EW_ERR_TRUNCATED: return "truncated frame or payload";
    case EW_ERR_TOO_LARGE: return "a length or count is too large";
    case EW_ERR_MALFORMED: return "malformed payload";
    case EW_ERR_REMOTE: return "the agent answered with an error";
    case EW_ERR_UNEXPECTED: return "unexpected message type or request id";
    default: return "unknown error";
    }
}

/* ------------------------------------------------------ POSIX transport */
#ifdef EW_POSIX
/* Needs POSIX.1-2008: compile with -D_POSIX_C_SOURCE=200809L under -std=c99
 * (or define it before the first #include). */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0 /* platforms without it: ignore SIGPIPE yourself */
#endif

/* Waits for `events` on fd: 1 ready, 0 timed out, -1 error. */
static inline int ewi_poll(int fd, short events, uint32_t timeout_ms) {
    struct pollfd p;
    int rc;
    p.fd = fd;
    p.events = events;
    p.revents = 0;
    do rc = poll(&p, 1, timeout_ms > 0x7fffffffu ? 0x7fffffff : (int)timeout_ms);
    while (rc < 0 && errno == EINTR);
    return rc;
}

/* A connected TCP socket (blocking, TCP_NODELAY), or -1. */
static inline int ew_connect_tcp(const char *host, int port, int timeout_ms) {
    struct addrinfo hints, *res = NULL, *ai;
    char service[16];
    int fd = -1;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (port <= 0 || port > 65535 || timeout_ms < 0) return -1;
    snprintf(service, sizeof(service), "%d", port);
    if (getaddrinfo(host, service, &hints, &res) != 0) return -1;
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        int flags, err = 0, one = 1;
        socklen_t err_len = sizeof(err);
        fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0) continue;
        /* Non-blocking connect, so that the timeout bounds it too. */
        flags = fcntl(fd, F_GETFL, 0);
        if (flags >= 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0 &&
            (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 ||
             (errno == EINPROGRESS && ewi_poll(fd, POLLOUT, (uint32_t)timeout_ms) == 1 &&
              getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &err_len) == 0 && err == 0)) &&
            fcntl(fd, F_SETFL, flags) == 0) {
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            break;
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

static inline int ewi_posix_send(void *ctx, const uint8_t *data, size_t len,
                                 uint32_t timeout_ms) {
    int fd = *(int *)ctx, ready = ewi_poll(fd, POLLOUT, timeout_ms);
    ssize_t n;
    if (ready == 0) return EW_ERR_TIMEOUT;
    if (ready < 0) return EW_ERR_IO;
    do n = send(fd, data, len > 0x7fffffff ? 0x7fffffff : len, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n < 0 ? EW_ERR_IO : (int)n;
}

static inline int ewi_posix_recv(void *ctx, uint8_t *data, size_t len, uint32_t timeout_ms) {
    int fd = *(int *)ctx, ready = ewi_poll(fd, POLLIN, timeout_ms);
    ssize_t n;
    if (ready == 0) return EW_ERR_TIMEOUT;
    if (ready < 0) return EW_ERR_IO;
    do n = recv(fd, data, len > 0x7fffffff ? 0x7fffffff : len, 0);
    while (n < 0 && errno == EINTR);
    return n < 0 ? EW_ERR_IO : (int)n;
}

static inline uint32_t ewi_posix_now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint32_t)((uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u);
}

/* An ew_io over the socket `*fd` (which must outlive it). */
static inline ew_io ew_posix_io(int *fd, uint32_t timeout_ms) {
    ew_io io;
    io.send = ewi_posix_send;
    io.recv = ewi_posix_recv;
    io.now_ms = ewi_posix_now_ms;
    io.ctx = fd;
    io.timeout_ms = timeout_ms;
    return io;
}
#endif /* EW_POSIX */

#endif /* EDGEWIRE_H */
