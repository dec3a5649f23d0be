/* Freestanding string helpers; built with -fno-builtin and -fno-tree-loop-distribute-patterns so gcc does
 * not turn these loops back into calls to themselves. Builds for -m64 and -m32. */
#include "common.h"

void *memset(void *d, int c, size_t n) {
    unsigned char *p = d;
    while (n--) *p++ = (unsigned char)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n) {
    unsigned char *p = d;
    const unsigned char *q = s;
    while (n--) *p++ = *q++;
    return d;
}

void *memmove(void *d, const void *s, size_t n) {
    unsigned char *p = d;
    const unsigned char *q = s;
    if (p < q) {
        while (n--) *p++ = *q++;
    } else {
        while (n--) p[n] = q[n];
    }
    return d;
}

int memcmp(const void *a, const void *b, size_t n) {
    const unsigned char *p = a, *q = b;
    for (size_t i = 0; i < n; i++)
        if (p[i] != q[i]) return p[i] < q[i] ? -1 : 1;
    return 0;
}

size_t strlen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

int strcmp(const char *a, const char *b) {
    while (*a && *a == *b) { a++; b++; }
    return (unsigned char)*a - (unsigned char)*b;
}

int strncmp(const char *a, const char *b, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (a[i] != b[i]) return (unsigned char)a[i] - (unsigned char)b[i];
        if (!a[i]) return 0;
    }
    return 0;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

const char *mv_cmdline_value(const char *cmdline, size_t len, const char *key, size_t *value_len) {
    size_t klen = strlen(key);
    size_t i = 0;
    while (i < len) {
        while (i < len && is_space(cmdline[i])) i++;
        size_t w = i;
        while (i < len && cmdline[i] && !is_space(cmdline[i])) i++;
        if (i - w > klen && strncmp(cmdline + w, key, klen) == 0 && cmdline[w + klen] == '=') {
            if (value_len) *value_len = i - (w + klen + 1);
            return cmdline + w + klen + 1;
        }
        if (i < len && !cmdline[i]) break;
    }
    return 0;
}

uint64_t mv_parse_u64(const char *s, size_t len, int *ok) {
    uint64_t v = 0;
    size_t i = 0;
    *ok = 0;
    if (len >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        for (i = 2; i < len; i++) {
            char c = s[i];
            unsigned d;
            if (c >= '0' && c <= '9') d = (unsigned)(c - '0');
            else if (c >= 'a' && c <= 'f') d = (unsigned)(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') d = (unsigned)(c - 'A' + 10);
            else return 0;
            v = (v << 4) | d;
        }
        *ok = len > 2;
        return v;
    }
    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        v = (v << 3) + (v << 1) + (uint64_t)(s[i] - '0');
    }
    *ok = len > 0;
    return v;
}
