/*
 * The Xen public ABI as this freestanding guest kernel sees it: the real
 * headers from /usr/include/xen, preceded by the fixed-width types they
 * expect their includer to provide.
 */
#ifndef COMMON_XENABI_H
#define COMMON_XENABI_H

#include <stddef.h>
#include <stdint.h>

#include <xen/xen.h>
#include <xen/elfnote.h>
#include <xen/event_channel.h>
#include <xen/sched.h>
#include <xen/vcpu.h>
#include <xen/version.h>
#include <xen/io/console.h>

/* Code selector Xen pushes in an upcall bounce frame (privilege bits cleared). */
#define BOUNCE_FRAME_CS (FLAT_KERNEL_CS64 & ~3)

#endif
