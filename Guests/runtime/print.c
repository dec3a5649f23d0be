/* Serial output on COM1, mv_printf and the print lock. Builds for -m64 and -m32 (no libgcc needed). */
#include "common.h"

#define LSR_THRE 0x20

void mv_serial_putc(char c) {
    if (c == '\n')
        mv_serial_putc('\r');
    /* Bounded wait: a missing or stuck UART must not hang the guest forever. */
    for (unsigned i = 0; i < 100000; i++)
        if (inb(MV_COM1 + 5) & LSR_THRE)
            break;
    outb(MV_COM1, (uint8_t)c);
}

void mv_serial_write(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        mv_serial_putc(s[i]);
}

/* ---- print lock: a test-and-test-and-set spinlock, usable from ring 0 and ring 3 ---- */
static volatile uint32_t print_lock_word;

void mv_print_lock(void) {
    for (;;) {
        uint32_t v = 1;
        __asm__ volatile("xchgl %0, %1" : "+r"(v), "+m"(print_lock_word) : : "memory");
        if (v == 0)
            return;
        while (print_lock_word)
            cpu_relax();
    }
}

void mv_print_unlock(void) {
    __asm__ volatile("" ::: "memory");
    print_lock_word = 0;
}

void mv_print_lock_break(void) { print_lock_word = 0; }

/* ---- formatting ---- */
uint64_t mv_udiv10(uint64_t n, unsigned *rem) {
    /* Hacker's Delight divu10, widened to 64 bits, with an exact correction step. */
    uint64_t q = (n >> 1) + (n >> 2);
    q += q >> 4;
    q += q >> 8;
    q += q >> 16;
    q += q >> 32;
    q >>= 3;
    uint64_t r = n - ((q << 3) + (q << 1));
    while (r >= 10) {
        q++;
        r -= 10;
    }
    *rem = (unsigned)r;
    return q;
}

struct sink {
    void (*put)(struct sink *, char);
    char *buf;
    size_t size, len;   /* len counts every byte produced, stored or not */
};

static void put_serial(struct sink *s, char c) { mv_serial_putc(c); s->len++; }
static void put_buf(struct sink *s, char c) {
    if (s->len + 1 < s->size)
        s->buf[s->len] = c;
    s->len++;
}

static void emit_pad(struct sink *s, char c, int n) {
    while (n-- > 0)
        s->put(s, c);
}

static void format(struct sink *s, const char *fmt, va_list ap) {
    static const char lower[] = "0123456789abcdef", upper[] = "0123456789ABCDEF";
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            s->put(s, *fmt);
            continue;
        }
        const char *start = fmt++;
        int left = 0, zero = 0, width = 0, prec = -1, lng = 0;
        for (;; fmt++) {
            if (*fmt == '-') left = 1;
            else if (*fmt == '0') zero = 1;
            else if (*fmt == ' ' || *fmt == '+' || *fmt == '#') { /* accepted, ignored */ }
            else break;
        }
        if (*fmt == '*') {
            width = va_arg(ap, int);
            if (width < 0) { left = 1; width = -width; }
            fmt++;
        } else {
            while (*fmt >= '0' && *fmt <= '9') width = width * 10 + (*fmt++ - '0');
        }
        if (*fmt == '.') {
            fmt++;
            prec = 0;
            if (*fmt == '*') { prec = va_arg(ap, int); fmt++; if (prec < 0) prec = -1; }
            else while (*fmt >= '0' && *fmt <= '9') prec = prec * 10 + (*fmt++ - '0');
        }
        for (;; fmt++) {
            if (*fmt == 'l') lng++;
            else if (*fmt == 'z') lng = (sizeof(size_t) == 8) ? 2 : 0;
            else if (*fmt == 'h') { /* promoted to int anyway; truncated below */ lng = lng > 0 ? lng : -1; if (fmt[1] == 'h') { fmt++; lng = -2; } }
            else break;
        }
        char c = *fmt;
        if (c == 0) { /* dangling '%': print it literally */
            for (const char *p = start; p < fmt; p++) s->put(s, *p);
            break;
        }
        if (c == '%') { s->put(s, '%'); continue; }
        if (c == 'c') {
            char ch = (char)va_arg(ap, int);
            if (!left) emit_pad(s, ' ', width - 1);
            s->put(s, ch);
            if (left) emit_pad(s, ' ', width - 1);
            continue;
        }
        if (c == 's') {
            const char *str = va_arg(ap, const char *);
            if (!str) str = "(null)";
            int n = 0;
            while ((prec < 0 || n < prec) && str[n]) n++;
            if (!left) emit_pad(s, ' ', width - n);
            for (int i = 0; i < n; i++) s->put(s, str[i]);
            if (left) emit_pad(s, ' ', width - n);
            continue;
        }

        uint64_t v;
        int neg = 0, base = 10;
        const char *digits = lower;
        const char *prefix = "";
        if (c == 'd' || c == 'i') {
            int64_t sv;
            if (lng >= 2) sv = va_arg(ap, long long);
            else if (lng == 1) sv = va_arg(ap, long);
            else sv = va_arg(ap, int);
            if (lng == -1) sv = (short)sv;
            if (lng == -2) sv = (signed char)sv;
            neg = sv < 0;
            v = neg ? (uint64_t)0 - (uint64_t)sv : (uint64_t)sv;
        } else if (c == 'u' || c == 'x' || c == 'X' || c == 'o') {
            if (lng >= 2) v = va_arg(ap, unsigned long long);
            else if (lng == 1) v = va_arg(ap, unsigned long);
            else v = va_arg(ap, unsigned int);
            if (lng == -1) v = (unsigned short)v;
            if (lng == -2) v = (unsigned char)v;
            if (c == 'x') base = 16;
            if (c == 'X') { base = 16; digits = upper; }
            if (c == 'o') base = 8;
        } else if (c == 'p') {
            v = (uintptr_t)va_arg(ap, void *);
            base = 16;
            prefix = "0x";
        } else {
            /* Unknown conversion: print the directive as written. */
            for (const char *p = start; p <= fmt; p++) s->put(s, *p);
            continue;
        }

        char tmp[24];
        int n = 0;
        if (v == 0 && prec != 0) tmp[n++] = '0';
        while (v) {
            unsigned r;
            if (base == 10) { v = mv_udiv10(v, &r); }
            else if (base == 16) { r = (unsigned)(v & 15); v >>= 4; }
            else { r = (unsigned)(v & 7); v >>= 3; }
            tmp[n++] = digits[r];
        }
        int zeros = prec > n ? prec - n : 0;
        int plen = (int)strlen(prefix);
        int body = n + zeros + neg + plen;
        if (zero && !left && prec < 0 && width > body) { zeros += width - body; body = width; }
        if (!left) emit_pad(s, ' ', width - body);
        if (neg) s->put(s, '-');
        for (int i = 0; i < plen; i++) s->put(s, prefix[i]);
        emit_pad(s, '0', zeros);
        while (n) s->put(s, tmp[--n]);
        if (left) emit_pad(s, ' ', width - body);
    }
}

int mv_vprintf(const char *fmt, va_list ap) {
    struct sink s = { put_serial, 0, 0, 0 };
    mv_print_lock();
    format(&s, fmt, ap);
    mv_print_unlock();
    return (int)s.len;
}

int mv_printf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = mv_vprintf(fmt, ap);
    va_end(ap);
    return n;
}

int mv_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap) {
    struct sink s = { put_buf, buf, size, 0 };
    format(&s, fmt, ap);
    if (size)
        buf[s.len < size ? s.len : size - 1] = 0;
    return (int)s.len;
}

int mv_snprintf(char *buf, size_t size, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = mv_vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

void mv_puts(const char *s) {
    mv_print_lock();
    mv_serial_write(s, strlen(s));
    mv_serial_putc('\n');
    mv_print_unlock();
}
