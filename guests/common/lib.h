/*
 * Freestanding C library subset: the mem* functions gcc may emit calls to,
 * string comparison, and integer-to-text formatting. No allocation, no state.
 */
#ifndef COMMON_LIB_H
#define COMMON_LIB_H

#include <stddef.h>
#include <stdint.h>

void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);

/* Digits needed for any 64-bit value, plus sign and NUL. */
#define FORMAT_BUF_SIZE 22

/* Write v in decimal (with '-' when negative) to out (FORMAT_BUF_SIZE bytes),
 * NUL-terminated; return the length. */
size_t format_i64(char *out, int64_t v);
size_t format_u64(char *out, uint64_t v);
/* Write v as exactly 16 lowercase hex digits, NUL-terminated; return 16. */
size_t format_hex64(char *out, uint64_t v);

/*
 * Parse a whole string as an unsigned decimal number (digits only, no sign,
 * at least one digit, no overflow past 2^64-1). Return 1 and set *value, or 0.
 */
int parse_u64(const char *s, uint64_t *value);

#endif
