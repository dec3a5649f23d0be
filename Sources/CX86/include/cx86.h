/*
 * cx86: x86 instruction decoding for minivisor's instruction emulator, through Zydis 4 (Debian's
 * libzydis-dev), flattened into plain structs Swift imports cleanly; and the locked read-modify-writes on
 * guest memory the emulator needs (a lock cmpxchg8b/16b on the host is atomic for the guest's other vCPUs).
 */
#ifndef CX86_H
#define CX86_H

#include <stddef.h>
#include <stdint.h>

enum {
    CX86_OPERAND_NONE = 0,
    CX86_OPERAND_REGISTER = 1,
    CX86_OPERAND_MEMORY = 2,
    CX86_OPERAND_IMMEDIATE = 3,
    CX86_OPERAND_POINTER = 4,
};

/* Register kinds (cx86_register.kind). */
enum {
    CX86_REG_NONE = 0,
    CX86_REG_GPR = 1,       /* index 0..15 = rax rcx rdx rbx rsp rbp rsi rdi r8..r15; width in bits */
    CX86_REG_GPR_HIGH8 = 2, /* ah ch dh bh: bits 8..15 of GPR index 0..3 */
    CX86_REG_RIP = 3,       /* rip/eip/ip (RIP-relative addressing) */
    CX86_REG_SEGMENT = 4,   /* index 0..5 = es cs ss ds fs gs */
    CX86_REG_OTHER = 5,     /* anything else (x87, SSE, control...): `zydis` names it */
};

typedef struct {
    uint8_t kind;
    uint8_t index;
    uint16_t width;         /* bits */
    int32_t zydis;          /* the ZydisRegister value */
} cx86_register;

typedef struct {
    uint8_t type;           /* CX86_OPERAND_* */
    uint8_t read, written;  /* the instruction reads / writes this operand */
    uint8_t visible;        /* explicit in the encoding (not implied) */
    uint16_t size;          /* operand size in bits */
    cx86_register reg;      /* REGISTER */
    /* MEMORY: segment:[base + index * scale + disp] (Zydis resolves the default segment) */
    cx86_register segment, base, index;
    uint8_t scale;
    int64_t disp;
    /* IMMEDIATE */
    uint64_t imm;
} cx86_operand;

#define CX86_MAX_OPERANDS 6

typedef struct {
    int32_t mnemonic;       /* ZydisMnemonic */
    uint8_t length;         /* bytes */
    uint8_t operand_width;  /* effective operand size, bits */
    uint8_t address_width;  /* effective address size, bits */
    uint8_t has_lock, has_rep, has_repne;
    uint8_t operand_count;  /* all operands (visible first, then hidden) */
    uint8_t visible_count;
    cx86_operand operands[CX86_MAX_OPERANDS];
} cx86_instruction;

/* Decodes one instruction in `mode_bits` (16, 32 or 64) code. Returns 0, or -1 when the bytes are not a
 * valid instruction (or too short), -2 for a bad mode. */
int cx86_decode(const uint8_t *bytes, size_t length, int mode_bits, cx86_instruction *out);

/* The mnemonic's name ("ldmxcsr"); "invalid" for unknown values. */
const char *cx86_mnemonic_name(int32_t mnemonic);

/* The register's name ("xmm0"), for messages. */
const char *cx86_register_name(int32_t zydis_register);

/* The ZydisMnemonic value for a name, or -1 (used to key the emulator's table by name). */
int32_t cx86_mnemonic_from_name(const char *name);

/* The host CPU's MXCSR_MASK (from fxsave; 0xffbf when the CPU stores 0 there): the MXCSR bits ldmxcsr
 * accepts. Guests run on the host's CPU, so this is also theirs. */
uint32_t cx86_host_mxcsr_mask(void);

/* Locked compare-exchange of 16 (or 8) bytes at `p` (16- or 8-byte aligned): compares with
 * expected[0..1] (low, high); on equality stores desired[0..1] and returns 1; else loads the current
 * value into expected and returns 0. Exactly the CPU's lock cmpxchg16b / cmpxchg8b. */
int cx86_cmpxchg16(void *p, uint64_t expected[2], const uint64_t desired[2]);
int cx86_cmpxchg8(void *p, uint64_t *expected, uint64_t desired);

#endif
