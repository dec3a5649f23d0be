import FuzzSupport
import Glibc
import Machine

// libFuzzer target: the guest image loaders (ELF64, multiboot ELF32, multiboot a.out kludge) through
// `ImageLoader.load(.bytes(...))`, which needs no KVM. The input is the image file. Seeds: the test guests
// (Guests/build/*.elf, copied by `make fuzz`) and the a.out images written here.
//
// Oracle: load either throws an `ImageError` (whose description must be one line) or returns a plan whose
// entry point (and a multiboot image's information block) lies in guest RAM; it must never trap or touch memory outside guest RAM (ASan).

/// One guest RAM for the whole process: the loader only writes it, so inputs stay independent.
let memory: GuestMemory = {
    do { return try GuestMemory(bytes: 16 << 20) } catch { fuzzFinding("cannot allocate guest memory: \(error)") }
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func loaderFuzzTarget(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: size > 0 ? data : nil, count: max(size, 0)))
    do {
        let plan = try ImageLoader.load(.bytes(bytes, name: "fuzz-image"), into: memory, cpuCount: 2, cmdline: "fuzz=1")
        let entry: UInt64
        switch plan.entry {
        case .long64(let rip): entry = rip
        case .multiboot(let eip, let info):
            entry = UInt64(eip)
            // The multiboot information (BootPlacement) must lie in guest RAM, 4-byte aligned (multiboot 1.0 3.3).
            guard info % 4 == 0, memory.contains(UInt64(info), length: 88) else {
                fuzzFinding("multiboot information at 0x\(String(info, radix: 16)) is not an aligned 88-byte block in guest RAM")
            }
        case .linux64(let rip, let bootParams):
            entry = rip
            // boot_params (the zero page) must lie in guest RAM, page aligned (Linux boot protocol).
            guard bootParams % 4096 == 0, memory.contains(bootParams, length: 4096) else {
                fuzzFinding("Linux boot_params at 0x\(String(bootParams, radix: 16)) is not a page in guest RAM")
            }
        case .real16: fuzzFinding("an image loaded as a real-mode blob: \(plan)")
        }
        guard plan.kind == .elf64 || plan.kind == .multiboot || plan.kind == .linux else { fuzzFinding("unexpected image kind \(plan.kind)") }
        guard memory.contains(entry) else { fuzzFinding("loaded image enters at 0x\(String(entry, radix: 16)), outside guest RAM") }
    } catch {
        let text = error.description
        guard !text.isEmpty, !text.contains("\n") else { fuzzFinding("error description is not one line: \(text)") }
    }
    return 0
}

@_cdecl("LLVMFuzzerInitialize")
public func loaderFuzzInitialize(_ argc: UnsafeMutablePointer<Int32>?, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> Int32 {
    FuzzSeeds.writeIfRequested(loaderSeeds)
    return 0
}

/// a.out-kludge multiboot images: the encoder's own, and hand-made headers with load_end, bss_end and a
/// header placed after some padding.
func loaderSeeds() -> [(name: String, bytes: [UInt8])] {
    let code: [UInt8] = [0xb8, 0x2a, 0x00, 0x00, 0x00, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd]   // mov eax, 42; out 0xf4, al; hlt; jmp
    var seeds: [(String, [UInt8])] = []
    seeds.append(("aout-plain", MultibootHeader.aoutImage(code: code).bytes))
    seeds.append(("aout-high", MultibootHeader.aoutImage(code: code + [UInt8](repeating: 0x90, count: 200), loadAddress: 0x20_0000).bytes))

    func le(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
    func aout(padding: Int, load: UInt32, loadEnd: UInt32, bssEnd: UInt32, flags: UInt32 = MultibootHeader.flagAOutKludge | 3) -> [UInt8] {
        let magic: UInt32 = 0x1BAD_B002
        let headerAddr = load + UInt32(padding)
        let entry = headerAddr + 32
        let header = le(magic) + le(flags) + le(0 &- (magic &+ flags)) + le(headerAddr) + le(load) + le(loadEnd) + le(bssEnd) + le(entry)
        return [UInt8](repeating: 0, count: padding) + header + code + [UInt8](repeating: 0xcc, count: 64)
    }
    seeds.append(("aout-bss", aout(padding: 0, load: 0x10_0000, loadEnd: 0x10_0000 + 32 + 10, bssEnd: 0x10_8000)))
    seeds.append(("aout-padded", aout(padding: 0x400, load: 0x10_0000, loadEnd: 0, bssEnd: 0)))
    seeds.append(("aout-memmap", aout(padding: 8, load: 0x30_0000, loadEnd: 0x30_0000 + 8 + 32 + 10, bssEnd: 0x30_2000)))
    return seeds
}
