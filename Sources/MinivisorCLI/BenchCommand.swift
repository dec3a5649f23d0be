import ArgumentParser
import MinivisorBench

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Measure exit costs against a minimal C KVM loop, and start-to-exit time.")
    func run() throws {}
}
