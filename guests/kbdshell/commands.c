/*
 * The command interpreter: splits a line into WORD and ARG and runs
 * echo, calc, hash, hist, ticks, uptime, bench and halt. Output formats are
 * specified in README.md; every output line ends with "\r\n".
 */
#include "shell.h"
#include "console.h"
#include "kernel.h"
#include "lib.h"
#include "clock.h"

#define FNV1A_OFFSET 0xcbf29ce484222325ull
#define FNV1A_PRIME 0x100000001b3ull
#define BENCH_MULTIPLIER 6364136223846793005ull

static void print_line(const char *s)
{
    console_puts(s);
    console_puts("\r\n");
}

/* ---- calc: recursive descent over + - * / % ( ) with 64-bit wrap-around ---- */

enum calc_error { CALC_OK, CALC_SYNTAX, CALC_DIV_ZERO };

struct calc {
    const char *p;
    enum calc_error error;
};

static int64_t calc_expr(struct calc *c);

static void skip_spaces(struct calc *c)
{
    while (*c->p == ' ')
        c->p++;
}

static void fail(struct calc *c, enum calc_error error)
{
    if (c->error == CALC_OK)
        c->error = error;
}

static int64_t calc_primary(struct calc *c)
{
    uint64_t value = 0;

    skip_spaces(c);
    if (*c->p == '(') {
        int64_t inner;

        c->p++;
        inner = calc_expr(c);
        skip_spaces(c);
        if (*c->p != ')') {
            fail(c, CALC_SYNTAX);
            return 0;
        }
        c->p++;
        return inner;
    }
    if (*c->p < '0' || *c->p > '9') {
        fail(c, CALC_SYNTAX);
        return 0;
    }
    while (*c->p >= '0' && *c->p <= '9')
        value = value * 10 + (uint64_t)(*c->p++ - '0');
    return (int64_t)value;
}

static int64_t calc_unary(struct calc *c)
{
    skip_spaces(c);
    if (*c->p == '-') {
        c->p++;
        return (int64_t)-(uint64_t)calc_unary(c);
    }
    if (*c->p == '+') {
        c->p++;
        return calc_unary(c);
    }
    return calc_primary(c);
}

static int64_t divide(struct calc *c, char op, int64_t a, int64_t b)
{
    if (b == 0) {
        fail(c, CALC_DIV_ZERO);
        return 0;
    }
    if (b == -1)   /* INT64_MIN / -1 overflows (and traps on x86): wrap instead. */
        return op == '/' ? (int64_t)-(uint64_t)a : 0;
    return op == '/' ? a / b : a % b;
}

static int64_t calc_term(struct calc *c)
{
    int64_t value = calc_unary(c);

    for (;;) {
        char op;

        skip_spaces(c);
        op = *c->p;
        if (op != '*' && op != '/' && op != '%')
            return value;
        c->p++;
        if (op == '*')
            value = (int64_t)((uint64_t)value * (uint64_t)calc_unary(c));
        else
            value = divide(c, op, value, calc_unary(c));
    }
}

static int64_t calc_expr(struct calc *c)
{
    int64_t value = calc_term(c);

    for (;;) {
        char op;

        skip_spaces(c);
        op = *c->p;
        if (op != '+' && op != '-')
            return value;
        c->p++;
        if (op == '+')
            value = (int64_t)((uint64_t)value + (uint64_t)calc_term(c));
        else
            value = (int64_t)((uint64_t)value - (uint64_t)calc_term(c));
    }
}

static void cmd_calc(const char *arg)
{
    struct calc c = { .p = arg, .error = CALC_OK };
    int64_t value = calc_expr(&c);

    skip_spaces(&c);
    if (*c.p != '\0')
        fail(&c, CALC_SYNTAX);
    if (c.error == CALC_DIV_ZERO) {
        print_line("error: division by zero");
    } else if (c.error == CALC_SYNTAX) {
        print_line("error: syntax");
    } else {
        console_put_i64(value);
        console_puts("\r\n");
    }
}

/* ---- hash, bench ---- */

static uint64_t fnv1a64(const char *text)
{
    uint64_t hash = FNV1A_OFFSET;

    for (; *text; text++) {
        hash ^= (unsigned char)*text;
        hash *= FNV1A_PRIME;
    }
    return hash;
}

static void cmd_hash(const char *arg)
{
    console_put_hex64(fnv1a64(arg));
    console_puts("\r\n");
}

/* The benchmark loop (README.md gives the same definition in Python). */
__attribute__((noinline)) static uint64_t bench_loop(uint64_t iterations)
{
    uint64_t x = 0, i;

    for (i = 0; i < iterations; i++) {
        x = x * BENCH_MULTIPLIER + i;
        x ^= x >> 29;
    }
    return x;
}

static void cmd_bench(const char *arg)
{
    uint64_t iterations;

    if (!parse_u64(arg, &iterations)) {
        print_line("error: usage: bench N");
        return;
    }
    console_put_hex64(bench_loop(iterations));
    console_puts("\r\n");
}

/* ---- dispatch ---- */

void run_command(const char *line)
{
    char word[LINE_TEXT_MAX + 1];
    const char *arg;
    unsigned n = 0;

    while (*line == ' ')
        line++;
    if (*line == '\0')
        return;
    while (line[n] && line[n] != ' ') {
        word[n] = line[n];
        n++;
    }
    word[n] = '\0';
    arg = line[n] == ' ' ? line + n + 1 : line + n;

    if (strcmp(word, "echo") == 0) {
        print_line(arg);
    } else if (strcmp(word, "calc") == 0) {
        cmd_calc(arg);
    } else if (strcmp(word, "hash") == 0) {
        cmd_hash(arg);
    } else if (strcmp(word, "hist") == 0) {
        print_history();
    } else if (strcmp(word, "ticks") == 0) {
        console_put_u64(timer_ticks());
        console_puts("\r\n");
    } else if (strcmp(word, "uptime") == 0) {
        console_put_u64(system_time_ns());
        console_puts("\r\n");
    } else if (strcmp(word, "bench") == 0) {
        cmd_bench(arg);
    } else if (strcmp(word, "halt") == 0) {
        poweroff();
    } else {
        console_puts("unknown command: ");
        print_line(word);
    }
}
