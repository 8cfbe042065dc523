/*
 * The PV console (struct xencons_interface, start_info->console.domU): output
 * goes into out[] and input comes from in[], each side notified through the
 * console event channel. Used from guest context only, never from the upcall.
 */
#ifndef COMMON_CONSOLE_H
#define COMMON_CONSOLE_H

#include "xenabi.h"

/* Map the ring and enable its event channel; needs events_init() first. */
void console_init(void);
/* True once console_init has run. */
int console_ready(void);

/* Queue n bytes of output; waits (SCHEDOP_yield) while the ring is full. */
void console_write(const char *buf, size_t n);
void console_puts(const char *s);
void console_put_i64(int64_t v);
void console_put_u64(uint64_t v);
void console_put_hex64(uint64_t v);
/* Wait, for a bounded number of yields, until the backend has consumed all output. */
void console_flush(void);

/* Move up to max pending input bytes into buf; return how many (0 when none). */
size_t console_read(char *buf, size_t max);
/* Like console_read, but idle in SCHEDOP_block until at least one byte arrived. */
size_t console_read_wait(char *buf, size_t max);

#endif
