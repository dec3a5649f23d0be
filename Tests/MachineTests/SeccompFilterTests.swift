import Glibc
import Synchronization
import Testing
@testable import Machine

/// Every filter builds and loads, and a thread keeps working under it (no KVM needed). Each load happens
/// on a thread this test creates and ends, never on a test runner thread.
@Suite("Seccomp filters (no KVM)")
struct SeccompFilterTests {
    /// Runs `body` on a fresh OS thread that loads `filter` first; returns the thread's label, or the error.
    func onFilteredThread(_ filter: SeccompFilter, _ body: @escaping @Sendable () -> Void = {}) -> Result<String?, SeccompError> {
        let result = Mutex<Result<String?, SeccompError>?>(nil)
        let t = OSThread.spawn(name: "filter-test") {
            do throws(SeccompError) {
                try Seccomp.install(filter, thread: "filter-test")
                body()
                let label = Seccomp.currentThreadLabel
                result.withLock { $0 = .success(label) }
            } catch {
                result.withLock { $0 = .failure(error) }
            }
        }
        guard let t else { return .failure(.libseccomp(operation: "spawn", thread: "filter-test", errno: EAGAIN)) }
        pthread_join(t, nil)
        return result.withLock { $0 } ?? .failure(.libseccomp(operation: "run", thread: "filter-test", errno: EINVAL))
    }

    @Test(arguments: SeccompFilter.allCases)
    func filterLoadsAndTheThreadKeepsWorking(_ filter: SeccompFilter) throws {
        // Allocation, locks, time and a write: what every filtered thread does.
        let r = onFilteredThread(filter) {
            var a = [UInt8](repeating: 1, count: 1 << 20)   // mmap-backed allocation, freed with munmap
            a[5] = 2
            let m = Mutex(0)
            m.withLock { $0 += Int(a[5]) }
            _ = ContinuousClock.now
            var v: UInt64 = 1
            _ = write(2, &v, 0)   // stderr, zero bytes
        }
        #expect(try r.get() == "filter-test (\(filter.rawValue) filter)")
        #expect(Seccomp.currentThreadLabel == nil, "the test's own thread must stay unfiltered")
    }

    @Test func everyRuleNamesAKnownSystemCall() {
        for filter in SeccompFilter.allCases {
            for rule in filter.rules {
                #expect(Seccomp.systemCallNumber(rule.name) != nil, "\(filter): \(rule.name)")
            }
        }
        #expect(Seccomp.systemCallNumber("no_such_call") == nil)
    }

    @Test func errorsNameCauseAndFixInOneLine() {
        let errors: [SeccompError] = [.unknownSystemCall("frob"), .libseccomp(operation: "load", thread: "vcpu0 (vcpu filter)", errno: EINVAL)]
        for e in errors {
            #expect(!e.description.contains("\n"))
            #expect(e.description.contains("--no-seccomp"))
        }
    }
}
