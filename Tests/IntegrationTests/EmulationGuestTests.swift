import Minivisor
import Testing

/// The emulate guest runs, in ring 0, instructions software-KVM hosts cannot emulate; minivisor's
/// instruction emulator must complete them with the results a CPU gives (the guest checks each one).
@Suite("Instruction emulator in a guest (needs /dev/kvm)", .serialized, .enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
struct EmulationGuestTests {
    @Test func ringZeroInstructionsGiveTheCPUsResults() throws {
        let (reason, out, machine) = try Support.boot(.file(try Support.guest("emulate")))
        #expect(reason == .powerOff, "\(out)")
        #expect(!out.contains("FAIL"), "\(out)")
        #expect(out.contains("mxcsr at entry (docs/boot-protocol.md): 0x1f80"))
        #expect(out.contains("mxcsr after ldmxcsr: 0x7f80"))
        #expect(out.contains("#GP from ldmxcsr with a reserved bit: 0x1"))
        #expect(out.contains("popcnt: 0x15"))
        #expect(out.contains("cmpxchg16b unequal: loaded rdx: 0x44"))
        #expect(out.contains("emulate ok"))
        let stats = machine.emulatedInstructions
        if HostProfile.detect().softwareKVM {
            // What this kind of host stops on (docs: README "Hosts without hardware virtualisation").
            #expect(stats.count(.int3) == 1)
            #expect(stats.count(.ldmxcsr) == 3)      // two loads and the one refused with #GP
            #expect(stats.count(.stmxcsr) == 4)      // the entry value, two reads back, the stack store
            #expect(stats.count(.popcnt) == 2)
            #expect(stats.count(.cmpxchg16b) == 2)
            #expect(stats.count(.fwait) == 1)
        } else {
            #expect(out.contains("movbe load: 0x807060504030201"))
            #expect(stats.total == 0, "a hardware host emulates these itself: \(stats.summary)")
        }
    }
}
