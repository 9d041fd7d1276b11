/* What the training program needs from the machine it runs on: a console line and an exit code,
 * and, on the device, its memory use. startup.c provides them on the MPS2-AN386 board (through
 * semihosting), host.c on the machine that builds (through stdio). */
#ifndef SPADC_MCU_PLATFORM_H
#define SPADC_MCU_PLATFORM_H

#include <stddef.h>

/* Write a NUL-terminated text to the console as it is. */
void platform_write(const char *text);

/* End the program with this exit code. */
void platform_exit(int code) __attribute__((noreturn));

/* Print the RAM and flash the program uses. `named` are the largest static buffers, each with its
 * name, for the report's breakdown; the total comes from the linker's symbols. */
struct buffer_size {
    const char *name;
    size_t bytes;
};
void platform_report_memory(const struct buffer_size *named, int count);

#endif
