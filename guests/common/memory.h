/*
 * Memory as Xen's start-of-day contract gives it to a PV guest (xen/xen.h,
 * "Start-of-day memory layout"): the bootstrap region is mapped 1:1 from the
 * pseudo-physical frames, start_info.mfn_list is the p2m list, the
 * machine-to-phys table is readable at MACH2PHYS_VIRT_START, and pages Xen
 * names by machine frame (shared_info, the console and xenstore rings) are
 * the guest's to map, with update_va_mapping.
 */
#ifndef COMMON_MEMORY_H
#define COMMON_MEMORY_H

#include "xenabi.h"

#define PAGE_SHIFT 12
#define PAGE_SIZE (1ul << PAGE_SHIFT)

/* A page-aligned page of virtual address space in .bss, to map a machine frame onto. */
#define PAGE_WINDOW(name) static char name[PAGE_SIZE] __attribute__((aligned(PAGE_SIZE), section(".bss.windows")))

/* Check the p2m list against the machine-to-phys table, unmap page 0 (a null pointer faults). */
void memory_init(void);

/* The machine frame behind a bootstrap-region address, through the p2m list. */
unsigned long virt_to_mfn(const void *address);

/* Map machine frame mfn read-write onto window (page-aligned); returns window. Panics on failure. */
void *map_machine_frame(void *window, unsigned long mfn);

#endif
