/*
 * kbdfront: the frontend of the PV keyboard (xen/io/kbdif.h), found and
 * connected through xenstore as Linux's xen-kbdfront does: the ring page is
 * granted to the backend (grant table v1), an event channel is allocated for
 * it, page-gref / page-ref / event-channel are published and the XenbusState
 * handshake (xen/io/xenbus.h) runs to Connected. Key events are turned into
 * characters with a US keymap (Shift, Ctrl; Enter is CR, Backspace DEL).
 * Needs events_init() first; uses the xenstore client (xenstore.h).
 */
#ifndef COMMON_KBDFRONT_H
#define COMMON_KBDFRONT_H

#include "xenabi.h"

/* Connect to device/vkbd/0 if the domain has one. Returns 1 when connected, 0 otherwise. */
int kbdfront_init(void);

/* Move up to max characters typed since the last call into buf; return how many (0 when none). */
size_t kbdfront_read(char *buf, size_t max);
/* Like kbdfront_read, but idle in SCHEDOP_block until at least one character arrived. */
size_t kbdfront_read_wait(char *buf, size_t max);

#endif
