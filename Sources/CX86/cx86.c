#include "cx86.h"

#include <string.h>
#include <Zydis/Zydis.h>

static cx86_register convert_register(ZydisRegister r) {
    cx86_register out = { CX86_REG_NONE, 0, 0, (int32_t)r };
    if (r == ZYDIS_REGISTER_NONE) return out;
    out.width = (uint16_t)ZydisRegisterGetWidth(ZYDIS_MACHINE_MODE_LONG_64, r);
    switch (r) {
    case ZYDIS_REGISTER_AH: case ZYDIS_REGISTER_CH: case ZYDIS_REGISTER_DH: case ZYDIS_REGISTER_BH:
        out.kind = CX86_REG_GPR_HIGH8;
        out.index = (uint8_t)(r == ZYDIS_REGISTER_AH ? 0 : r == ZYDIS_REGISTER_CH ? 1 : r == ZYDIS_REGISTER_DH ? 2 : 3);
        return out;
    case ZYDIS_REGISTER_RIP: case ZYDIS_REGISTER_EIP: case ZYDIS_REGISTER_IP:
        out.kind = CX86_REG_RIP;
        return out;
    case ZYDIS_REGISTER_ES: out.kind = CX86_REG_SEGMENT; out.index = 0; return out;
    case ZYDIS_REGISTER_CS: out.kind = CX86_REG_SEGMENT; out.index = 1; return out;
    case ZYDIS_REGISTER_SS: out.kind = CX86_REG_SEGMENT; out.index = 2; return out;
    case ZYDIS_REGISTER_DS: out.kind = CX86_REG_SEGMENT; out.index = 3; return out;
    case ZYDIS_REGISTER_FS: out.kind = CX86_REG_SEGMENT; out.index = 4; return out;
    case ZYDIS_REGISTER_GS: out.kind = CX86_REG_SEGMENT; out.index = 5; return out;
    default: break;
    }
    ZydisRegisterClass c = ZydisRegisterGetClass(r);
    if (c == ZYDIS_REGCLASS_GPR8 || c == ZYDIS_REGCLASS_GPR16 || c == ZYDIS_REGCLASS_GPR32 || c == ZYDIS_REGCLASS_GPR64) {
        ZydisRegister full = ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, r);
        if (full >= ZYDIS_REGISTER_RAX && full <= ZYDIS_REGISTER_R15) {
            out.kind = CX86_REG_GPR;
            out.index = (uint8_t)(full - ZYDIS_REGISTER_RAX);
            return out;
        }
    }
    out.kind = CX86_REG_OTHER;
    return out;
}

int cx86_decode(const uint8_t *bytes, size_t length, int mode_bits, cx86_instruction *out) {
    ZydisMachineMode mode;
    ZydisStackWidth stack;
    switch (mode_bits) {
    case 64: mode = ZYDIS_MACHINE_MODE_LONG_64; stack = ZYDIS_STACK_WIDTH_64; break;
    case 32: mode = ZYDIS_MACHINE_MODE_LEGACY_32; stack = ZYDIS_STACK_WIDTH_32; break;
    case 16: mode = ZYDIS_MACHINE_MODE_LEGACY_16; stack = ZYDIS_STACK_WIDTH_16; break;
    default: return -2;
    }
    ZydisDecoder decoder;
    if (!ZYAN_SUCCESS(ZydisDecoderInit(&decoder, mode, stack))) return -2;
    ZydisDecodedInstruction insn;
    ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
    if (!ZYAN_SUCCESS(ZydisDecoderDecodeFull(&decoder, bytes, length, &insn, ops))) return -1;
    memset(out, 0, sizeof *out);
    out->mnemonic = (int32_t)insn.mnemonic;
    out->length = insn.length;
    out->operand_width = insn.operand_width;
    out->address_width = insn.address_width;
    out->has_lock = (insn.attributes & ZYDIS_ATTRIB_HAS_LOCK) != 0;
    out->has_rep = (insn.attributes & ZYDIS_ATTRIB_HAS_REP) != 0;
    out->has_repne = (insn.attributes & ZYDIS_ATTRIB_HAS_REPNE) != 0;
    out->visible_count = insn.operand_count_visible;
    unsigned n = insn.operand_count < CX86_MAX_OPERANDS ? insn.operand_count : CX86_MAX_OPERANDS;
    out->operand_count = (uint8_t)n;
    for (unsigned i = 0; i < n; i++) {
        const ZydisDecodedOperand *o = &ops[i];
        cx86_operand *d = &out->operands[i];
        d->read = (o->actions & ZYDIS_OPERAND_ACTION_MASK_READ) != 0;
        d->written = (o->actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) != 0;
        d->visible = o->visibility == ZYDIS_OPERAND_VISIBILITY_EXPLICIT;
        d->size = o->size;
        switch (o->type) {
        case ZYDIS_OPERAND_TYPE_REGISTER:
            d->type = CX86_OPERAND_REGISTER;
            d->reg = convert_register(o->reg.value);
            break;
        case ZYDIS_OPERAND_TYPE_MEMORY:
            d->type = CX86_OPERAND_MEMORY;
            d->segment = convert_register(o->mem.segment);
            d->base = convert_register(o->mem.base);
            d->index = convert_register(o->mem.index);
            d->scale = o->mem.scale;
            d->disp = o->mem.disp.has_displacement ? o->mem.disp.value : 0;
            break;
        case ZYDIS_OPERAND_TYPE_IMMEDIATE:
            d->type = CX86_OPERAND_IMMEDIATE;
            d->imm = o->imm.value.u;
            break;
        case ZYDIS_OPERAND_TYPE_POINTER:
            d->type = CX86_OPERAND_POINTER;
            d->imm = ((uint64_t)o->ptr.segment << 32) | o->ptr.offset;
            break;
        default:
            d->type = CX86_OPERAND_NONE;
            break;
        }
    }
    return 0;
}

const char *cx86_mnemonic_name(int32_t mnemonic) {
    const char *s = ZydisMnemonicGetString((ZydisMnemonic)mnemonic);
    return s ? s : "invalid";
}

const char *cx86_register_name(int32_t zydis_register) {
    const char *s = ZydisRegisterGetString((ZydisRegister)zydis_register);
    return s ? s : "invalid";
}

int32_t cx86_mnemonic_from_name(const char *name) {
    for (int32_t m = 1; m <= (int32_t)ZYDIS_MNEMONIC_MAX_VALUE; m++) {
        const char *s = ZydisMnemonicGetString((ZydisMnemonic)m);
        if (s && strcmp(s, name) == 0) return m;
    }
    return -1;
}

int cx86_cmpxchg16(void *p, uint64_t expected[2], const uint64_t desired[2]) {
    uint8_t ok;
    __asm__ volatile("lock cmpxchg16b %1\n\tsetz %0"
                     : "=q"(ok), "+m"(*(volatile __int128 *)p), "+a"(expected[0]), "+d"(expected[1])
                     : "b"(desired[0]), "c"(desired[1])
                     : "memory", "cc");
    return ok;
}

int cx86_cmpxchg8(void *p, uint64_t *expected, uint64_t desired) {
    return __atomic_compare_exchange_n((volatile uint64_t *)p, expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

uint32_t cx86_host_mxcsr_mask(void) {
    uint8_t area[512] __attribute__((aligned(16)));
    memset(area, 0, sizeof area);
    __asm__ volatile("fxsave %0" : "=m"(area));
    uint32_t mask;
    memcpy(&mask, area + 28, sizeof mask);
    return mask ? mask : 0xffbf;
}
