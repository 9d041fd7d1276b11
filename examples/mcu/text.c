/* Text without printf: see text.h. The same on the board and on the host, so that both print the
 * same characters for the same bits. */
#include <string.h>

#include "text.h"

char *append(char *out, const char *text) {
    size_t n = strlen(text);
    memcpy(out, text, n + 1);
    return out + n;
}

char *append_count(char *out, uint32_t value) {
    char digits[12];
    int n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    while (n)
        *out++ = digits[--n];
    *out = 0;
    return out;
}

char *append_real(char *out, float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    double v = value;
    if (v < 0) {
        *out++ = '-';
        v = -v;
    }
    int exponent = 0;
    for (; v != 0 && v >= 10; exponent++)
        v /= 10;
    for (; v != 0 && v < 1; exponent--)
        v *= 10;
    uint32_t digits = (uint32_t)(v * 1e6 + 0.5);
    if (digits >= 10000000) { /* 9.9999996 rounded up */
        digits /= 10;
        exponent++;
    }
    char text[7];
    for (int k = 6; k >= 0; k--, digits /= 10)
        text[k] = (char)('0' + digits % 10);
    *out++ = text[0];
    *out++ = '.';
    memcpy(out, text + 1, 6);
    out += 6;
    *out++ = 'e';
    *out++ = exponent < 0 ? '-' : '+';
    int magnitude = exponent < 0 ? -exponent : exponent;
    *out++ = (char)('0' + magnitude / 10);
    *out++ = (char)('0' + magnitude % 10);
    static const char hex[] = "0123456789abcdef";
    out = append(out, " (0x");
    for (int shift = 28; shift >= 0; shift -= 4)
        *out++ = hex[(bits >> shift) & 0xf];
    return append(out, ")");
}
