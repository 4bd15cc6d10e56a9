import Foundation
import Logging
import PipelineCore
@testable import EventSources

/// Whether this machine can run the eBPF tests, decided once. When it
/// cannot, the tests are skipped with the reason printed, unless
/// `PIPELINED_REQUIRE_BPF=1`: then they run and fail with the real error.
enum KernelTests {
    static let required = ProcessInfo.processInfo.environment["PIPELINED_REQUIRE_BPF"] == "1"

    static let unavailableReason: String? = KernelSupport.unavailableReason

    /// The condition of `.enabled(if:)` on every kernel test.
    static var enabled: Bool {
        guard unavailableReason != nil else { return true }
        if required { return true }
        skipNotice
        return false
    }

    /// Printed once, however many tests are skipped.
    private static let skipNotice: Void = {
        print("skipping the eBPF tests: \(unavailableReason ?? "") (set PIPELINED_REQUIRE_BPF=1 to fail instead)")
    }()

    static let logger = Logger(label: "kernel-test", factory: { _ in SwiftLogNoOpLogHandler() })

    /// The running kernel's (major, minor), from uname(2).
    static let kernelVersion: (Int, Int) = {
        var names = utsname()
        uname(&names)
        let release = withUnsafeBytes(of: names.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let numbers = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        return (numbers.first ?? 0, numbers.count > 1 ? numbers[1] : 0)
    }()
}

extension SyscallEvent {
    /// The event in the driver's terms, for comparison.
    var expectedForm: ExpectedEvent {
        ExpectedEvent(name: kind?.name ?? "?\(eventID)", retval: retval, args: args)
    }
}

extension Array where Element == PipelineRecord {
    /// The events of one process (by host pid), in the order they happened.
    func events(of pid: Int32) -> [SyscallEvent] {
        compactMap { record -> SyscallEvent? in
            if case .event(let event) = record, event.hostPid == UInt32(pid) { return event }
            return nil
        }.sorted { $0.ktimeNs < $1.ktimeNs }
    }

    var lostCount: UInt64 {
        reduce(0) { total, record in
            if case .lost(let lost) = record { return total + lost.count }
            return total
        }
    }
}
