#include "firmware.h"

extern const unsigned char mv_fw_ap_trampoline_start[], mv_fw_ap_trampoline_end[];
extern const unsigned char mv_fw_demo_guest_start[], mv_fw_demo_guest_end[];

const unsigned char *mv_firmware_ap_trampoline(unsigned long *length) {
    *length = (unsigned long)(mv_fw_ap_trampoline_end - mv_fw_ap_trampoline_start);
    return mv_fw_ap_trampoline_start;
}

const unsigned char *mv_firmware_demo_guest(unsigned long *length) {
    *length = (unsigned long)(mv_fw_demo_guest_end - mv_fw_demo_guest_start);
    return mv_fw_demo_guest_start;
}
