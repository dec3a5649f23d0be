/* triplefault: loads an IDT with limit 0 and executes ud2. #UD cannot be delivered (#GP), nor can the
 * #GP (#DF), nor the #DF: the CPU shuts down and the VM must end with a triple fault. */
#include "mv.h"

int main(const struct mv_boot_info *bi) {
    (void)bi;
    struct __attribute__((packed)) { uint16_t limit; uint64_t base; } empty = { 0, 0 };
    mv_puts("about to triple fault");
    __asm__ volatile("lidt %0\n\tud2" : : "m"(empty) : "memory");
    mv_puts("triplefault FAIL: execution continued after ud2 with an empty IDT");
    return 1;
}
