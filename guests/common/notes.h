/*
 * The Xen ELF notes a PV kernel carries (xen/elfnote.h), emitted into the
 * allocated section .note.Xen, which the linker script places in a PT_NOTE
 * segment. Use XEN_GUEST_NOTES("name") once per guest, at file scope.
 */
#ifndef COMMON_NOTES_H
#define COMMON_NOTES_H

#include "xenabi.h"

#define XEN_NOTE_STR_(x) #x
#define XEN_NOTE_STR(x) XEN_NOTE_STR_(x)

/* One note: name "Xen", the given type, and `desc` (assembler directives) as descriptor. */
#define XEN_NOTE(type, desc)                                                  \
    ".balign 4\n"                                                             \
    ".long 2f - 1f\n"                                                         \
    ".long 4f - 3f\n"                                                         \
    ".long " XEN_NOTE_STR(type) "\n"                                          \
    "1: .asciz \"Xen\"\n"                                                     \
    "2: .balign 4\n"                                                          \
    "3: " desc "\n"                                                           \
    "4: .balign 4\n"

#define XEN_GUEST_NOTES(guest_name)                                           \
    asm(".pushsection .note.Xen, \"a\", @note\n"                              \
        XEN_NOTE(XEN_ELFNOTE_GUEST_OS, ".asciz \"" guest_name "\"")           \
        XEN_NOTE(XEN_ELFNOTE_XEN_VERSION, ".asciz \"xen-3.0\"")               \
        XEN_NOTE(XEN_ELFNOTE_LOADER, ".asciz \"generic\"")                    \
        XEN_NOTE(XEN_ELFNOTE_VIRT_BASE, ".quad 0")                            \
        XEN_NOTE(XEN_ELFNOTE_ENTRY, ".quad _start")                           \
        XEN_NOTE(XEN_ELFNOTE_HYPERCALL_PAGE, ".quad hypercall_page")          \
        ".popsection\n")

#endif
