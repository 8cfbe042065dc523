/* Freestanding C library subset: see lib.h. */
#include "lib.h"

void *memcpy(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;

    while (n--)
        *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;

    if (d < s) {
        while (n--)
            *d++ = *s++;
    } else {
        while (n--)
            d[n] = s[n];
    }
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    unsigned char *d = dst;

    while (n--)
        *d++ = (unsigned char)c;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a, *y = b;

    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x - *y;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;

    while (s[n])
        n++;
    return n;
}

int strcmp(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return (unsigned char)*a - (unsigned char)*b;
}

size_t format_u64(char *out, uint64_t v)
{
    char digits[FORMAT_BUF_SIZE];
    size_t n = 0, i;

    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (i = 0; i < n; i++)
        out[i] = digits[n - 1 - i];
    out[n] = '\0';
    return n;
}

size_t format_i64(char *out, int64_t v)
{
    if (v >= 0)
        return format_u64(out, (uint64_t)v);
    out[0] = '-';
    /* Negate in unsigned arithmetic so INT64_MIN is exact. */
    return 1 + format_u64(out + 1, -(uint64_t)v);
}

size_t format_hex64(char *out, uint64_t v)
{
    static const char hex[] = "0123456789abcdef";
    int i;

    for (i = 15; i >= 0; i--) {
        out[i] = hex[v & 0xf];
        v >>= 4;
    }
    out[16] = '\0';
    return 16;
}

int parse_u64(const char *s, uint64_t *value)
{
    uint64_t v = 0;

    if (!*s)
        return 0;
    for (; *s; s++) {
        unsigned digit = (unsigned)(*s - '0');

        if (digit > 9 || v > (UINT64_MAX - digit) / 10)
            return 0;
        v = v * 10 + digit;
    }
    *value = v;
    return 1;
}
