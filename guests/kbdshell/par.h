/*
 * par N: the shared-counter race across two vCPUs (par.c, README.md).
 */
#ifndef KBDSHELL_PAR_H
#define KBDSHELL_PAR_H

void cmd_par(const char *arg);

#endif
