/* Text without printf (no heap, no stdio on the board): each function writes at `out`, ends the
 * text with a NUL and returns where it ends, so that calls chain. */
#ifndef SPADC_MCU_TEXT_H
#define SPADC_MCU_TEXT_H

#include <stdint.h>

char *append(char *out, const char *text);
char *append_count(char *out, uint32_t value);
/* Seven significant digits, then the float's exact bits: "2.302585e+00 (0x40135d8e)". */
char *append_real(char *out, float value);

#endif
