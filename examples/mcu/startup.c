/* Start-up and console of the MPS2-AN386 board (Cortex-M4F) under QEMU, for the training program.
 *
 * Reset: enable the FPU, copy .data from flash, zero .bss, paint the unused stack with a known word
 * so its high-water mark can be read back at the end, call main, exit with its return code.
 * Console and exit go through Arm semihosting (`bkpt 0xab`), which QEMU serves when started with
 * `-semihosting-config enable=on,target=native`. Nothing here allocates: there is no heap.
 * The symbols __data_start ... __stack_top come from mps2_an386.ld. */
#include <stdint.h>
#include <string.h>

#include "platform.h"
#include "text.h"

extern uint32_t __data_start[], __data_end[], __data_load[], __bss_start[], __bss_end[];
extern uint32_t __ram_start[], __stack_top[], __stack_limit[], __flash_used[];

int main(void);
void reset_handler(void);

#define STACK_PAINT 0x5a5aa5a5u
#define SEMIHOSTING_WRITE0 0x04
#define SEMIHOSTING_EXIT_EXTENDED 0x20
#define ADP_STOPPED_APPLICATION_EXIT 0x20026
#define CPACR (*(volatile uint32_t *)0xe000ed88u) /* coprocessor access: CP10, CP11 are the FPU */

__attribute__((used, noreturn)) static void report_fault(void) {
    platform_write("fault: the program stopped on a processor exception\n");
    platform_exit(3);
}

/* The stack pointer may be what faulted (a stack run out of RAM): report from a fresh stack. */
__attribute__((naked)) static void fault_handler(void) {
    __asm__ volatile("ldr r0, =__stack_top\n\tmov sp, r0\n\tb report_fault");
}

/* The initial stack pointer, then the handlers: reset, NMI, hard fault, memory management, bus and
 * usage faults. A fault ends the run with a message rather than hanging the emulator. */
__attribute__((section(".vectors"), used)) static void (*const vector_table[7])(void) = {
    (void (*)(void))__stack_top, reset_handler, fault_handler, fault_handler,
    fault_handler, fault_handler, fault_handler,
};

static int semihosting_call(int operation, const void *argument) {
    register int r0 __asm__("r0") = operation;
    register const void *r1 __asm__("r1") = argument;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void platform_write(const char *text) {
    semihosting_call(SEMIHOSTING_WRITE0, text);
}

void platform_exit(int code) {
    const uint32_t block[2] = {ADP_STOPPED_APPLICATION_EXIT, (uint32_t)code};
    for (;;)
        semihosting_call(SEMIHOSTING_EXIT_EXTENDED, block);
}

/* label, the count of bytes, then `after`, on the console */
static void write_size(const char *label, size_t bytes, const char *after) {
    char text[128];
    append(append_count(append(text, label), (uint32_t)bytes), after);
    platform_write(text);
}

void platform_report_memory(const struct buffer_size *named, int count) {
    const uint32_t *word = __stack_limit;
    while (word < __stack_top && *word == STACK_PAINT)
        word++;
    if (word == __stack_limit) { /* no painted word left: the stack ran into the static data */
        platform_write("the stack overflowed into the static data: the run's results cannot be trusted\n");
        platform_exit(4);
    }
    size_t stack = (size_t)((const char *)__stack_top - (const char *)word);
    size_t data = (size_t)((char *)__data_end - (char *)__data_start);
    size_t bss = (size_t)((char *)__bss_end - (char *)__bss_start);
    size_t capacity = (size_t)((char *)__stack_top - (char *)__ram_start);
    write_size("ram ", data + bss + stack, " bytes used");
    write_size(" of ", capacity, "\n");
    write_size("  static data ", data + bss, " bytes (.data ");
    write_size("", data, ", .bss ");
    write_size("", bss, ")\n");
    for (int k = 0; k < count; k++) {
        write_size("    ", named[k].bytes, " ");
        platform_write(named[k].name);
        platform_write("\n");
    }
    write_size("  stack ", stack, " bytes (high-water mark)\n");
    write_size("flash ", (size_t)__flash_used, " bytes (text, read-only data and .data's image)\n");
}

void reset_handler(void) {
    CPACR |= 0xfu << 20; /* full access to CP10 and CP11 before any float instruction */
    __asm__ volatile("dsb\n\tisb" ::: "memory");
    memcpy(__data_start, __data_load, (size_t)((char *)__data_end - (char *)__data_start));
    memset(__bss_start, 0, (size_t)((char *)__bss_end - (char *)__bss_start));
    /* Paint from the stack's limit up to a little below this function's own frame. */
    uint32_t *sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (uint32_t *word = __stack_limit; word < sp - 16; word++)
        *word = STACK_PAINT;
    platform_exit(main());
}
