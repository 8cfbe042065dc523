/*
 * The guest side of the start-of-day memory contract (memory.h). Invariant:
 * after memory_init, page 0 is unmapped and every page mapped by
 * map_machine_frame shows the frame Xen named, read-write.
 */
#include "memory.h"
#include "hypercall.h"
#include "kernel.h"

/* x86 page-table entry bits (Intel SDM vol. 3, 4.5) */
#define PTE_PRESENT 0x001ul
#define PTE_RW 0x002ul
#define PTE_ACCESSED 0x020ul
#define PTE_DIRTY 0x040ul
#define PTE_FLAGS (PTE_PRESENT | PTE_RW | PTE_ACCESSED | PTE_DIRTY)

static const unsigned long *const machine_to_phys = (const unsigned long *)MACH2PHYS_VIRT_START;

unsigned long virt_to_mfn(const void *address)
{
    const unsigned long *p2m = (const unsigned long *)start_info->mfn_list;

    return p2m[(unsigned long)address >> PAGE_SHIFT];
}

void memory_init(void)
{
    unsigned long pfn = (unsigned long)start_info >> PAGE_SHIFT;

    if (machine_to_phys[virt_to_mfn(start_info)] != pfn)
        panic("the p2m list and the machine-to-phys table disagree");
    if (HYPERVISOR_update_va_mapping(0, 0, UVMF_INVLPG) != 0)
        panic("cannot unmap page 0");
}

void *map_machine_frame(void *window, unsigned long mfn)
{
    if (HYPERVISOR_update_va_mapping(window, (mfn << PAGE_SHIFT) | PTE_FLAGS, UVMF_INVLPG) != 0)
        panic("update_va_mapping refused to map a machine frame");
    return window;
}
