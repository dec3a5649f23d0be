/*
 * common.h: the part of the guest runtime that is the same for 64-bit guests and the 32-bit
 * multiboot kernel: serial output on COM1, mv_printf, string helpers, exit ports.
 */
#ifndef MV_COMMON_H
#define MV_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include "io.h"

/* Ports (docs/boot-protocol.md). */
#define MV_COM1            0x3f8
#define MV_DEBUG_EXIT_PORT 0xf4     /* write V: VM ends with status (V << 1) | 1 */
#define MV_POWER_OFF_PORT  0x604    /* ACPI PM1a_CNT: SLP_TYP 0 (\_S5) | SLP_EN (0x2000): VM powers off, status 0 */
#define MV_POWER_OFF_VALUE 0x2000

#define MV_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MV_NORETURN __attribute__((noreturn))
#define MV_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* Serial output (COM1). Each byte waits for LSR.THRE; "\n" goes out as "\r\n". */
void mv_serial_putc(char c);              /* no lock */
void mv_serial_write(const char *s, size_t n);   /* no lock */

/*
 * Formatted output: %d %i %u %x %X %o %p %s %c %% with flags '-' and '0', a width (or '*'), a precision
 * (or '.*'; for %s it limits the bytes printed) and the length modifiers hh h l ll z.
 * mv_printf and mv_puts hold the print lock for the whole call, so lines from several CPUs
 * (or from ring 3) never interleave as long as each line is printed by one call.
 */
int mv_printf(const char *fmt, ...) MV_PRINTF(1, 2);
int mv_vprintf(const char *fmt, va_list ap);
int mv_snprintf(char *buf, size_t size, const char *fmt, ...) MV_PRINTF(3, 4);
int mv_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
void mv_puts(const char *s);              /* s followed by a newline */
void mv_print_lock(void);
void mv_print_unlock(void);
void mv_print_lock_break(void);           /* for fatal paths: forget whoever held the lock */

/*
 * mv_exit(0) powers off (VM status 0); any other code is written to the debug-exit port
 * (VM status (code << 1) | 1). Never returns: if the VM is still running it halts forever.
 */
void mv_exit(int code) MV_NORETURN;
void mv_halt_forever(void) MV_NORETURN;

/* Freestanding string helpers (gcc may also emit calls to memcpy/memset/memmove/memcmp). */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);

/* Find "key=" as a whitespace-separated word in cmdline[0..len); returns the value's start or NULL. */
const char *mv_cmdline_value(const char *cmdline, size_t len, const char *key, size_t *value_len);
/* Parse an unsigned decimal or 0x-prefixed hex number; *ok = 0 on garbage. */
uint64_t mv_parse_u64(const char *s, size_t len, int *ok);

/* 64-bit unsigned divide by 10 without libgcc (also used by the 32-bit kernel). */
uint64_t mv_udiv10(uint64_t n, unsigned *rem);

#endif
