// Boot code minivisor copies into guests, assembled from Firmware/*.S by the package build.
#ifndef MV_FIRMWARE_H
#define MV_FIRMWARE_H

// The AP trampoline, to be copied to guest-physical 0x8000 (SIPI vector 0x08).
const unsigned char *mv_firmware_ap_trampoline(unsigned long *length);
// The built-in demo guest, a flat position-independent 64-bit image loaded at 1 MiB.
const unsigned char *mv_firmware_demo_guest(unsigned long *length);

#endif
