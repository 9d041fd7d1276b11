/* The console of the training program on the machine that builds it: the same steps as on the
 * board, for comparing the two loss curves. RAM is the board's question, so nothing is reported. */
#include <stdio.h>
#include <stdlib.h>

#include "platform.h"

void platform_write(const char *text) {
    fputs(text, stdout);
}

void platform_exit(int code) {
    fflush(stdout);
    exit(code);
}

void platform_report_memory(const struct buffer_size *named, int count) {
    (void)named;
    (void)count;
}
