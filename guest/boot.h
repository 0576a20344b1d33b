/* PID 1: the initramfs stage, the system setup, then the agent loop. */
#ifndef MA_BOOT_H
#define MA_BOOT_H

void pid1_main(void) __attribute__((noreturn));

#endif
