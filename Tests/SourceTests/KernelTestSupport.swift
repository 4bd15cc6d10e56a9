import Foundation
import Logging
import PipelineCore
import Testing
@testable import EventSources
@testable import TestSupport

/// Whether this machine can run the eBPF tests, decided once. When it
/// cannot, the tests are skipped with the reason printed, unless
/// `PIPELINED_REQUIRE_BPF=1`: then they run and fail with the real error.
enum KernelTests {
    static let required = ProcessInfo.processInfo.environment["PIPELINED_REQUIRE_BPF"] == "1"

    static let unavailableReason: String? = {
        if let missing = KernelSupport.missingPrivilege() { return missing }
        if !FileManager.default.fileExists(atPath: "/sys/kernel/btf/vmlinux") {
            return "the kernel has no BTF (/sys/kernel/btf/vmlinux), which the program's CO-RE reads need"
        }
        if let problem = KernelSupport.ensureTracefs() { return problem }
        if !KernelSupport.hasTracepoint("syscalls", "sys_enter_connect") {
            return "the kernel has no syscall tracepoints (CONFIG_FTRACE_SYSCALLS)"
        }
        return nil
    }()

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

/// A `syscall_monitor` source running in a real pipeline whose only sink
/// keeps every record in memory.
final class TraceSession {
    let source: SyscallMonitorSource
    let sink: MemorySink
    let runtime: PipelineRuntime

    /// Loads and attaches; throws what `pipelined run` would report.
    /// `stalled`: the sink takes nothing until `sink.release()`, and its
    /// small blocking queue then holds the source back, so the kernel buffer
    /// fills however fast the reader would be.
    init(_ options: SyscallMonitorOptions, stalled: Bool = false) throws {
        source = SyscallMonitorSource(options)
        sink = MemorySink(stalled: stalled)
        let queue = stalled ? QueuePolicy(capacityEvents: 16, whenFull: .block) : QueuePolicy()
        let plan = StageHarness.plan(sources: [("kernel", source)], sinks: [("memory", sink, queue)])
        runtime = PipelineRuntime(plan: plan, logger: KernelTests.logger)
        try runtime.start()
    }

    /// Stops the source (which detaches and drains the kernel buffers) and
    /// returns every record the sink received.
    func finish() -> (records: [PipelineRecord], summary: RunSummary) {
        runtime.stop()
        let summary = runtime.wait()
        return (sink.records, summary)
    }
}

extension Driver.Run {
    /// Of the events of a `files` run, those the driver reported: the
    /// dynamic loader and libc also open and close files in the driver, so
    /// only the events about `directory` and the driver's own descriptors.
    func fileEvents(in all: [SyscallEvent], directory: String) throws -> [SyscallEvent] {
        let expected = try expected()
        let dirfd = try #require(comments.first { $0.hasPrefix("# dirfd ") }.flatMap { Int32($0.dropFirst(8)) })
        let closed = Set(expected.filter { $0.name == "close" }.compactMap { event -> Int32? in
            if case .int(let fd) = event.args[0] { return fd }
            return nil
        })
        // Before its exec, the spawned child closes inherited descriptors:
        // start at the driver's first reported syscall.
        let start = all.firstIndex { $0.expectedForm == expected.first } ?? 0
        return all[start...].filter { event in
            switch event.kind?.name {
            case "open": return event.args[0].isPath(under: directory)
            case "openat": return event.args[1].isPath(under: directory) || event.args[0] == .int(dirfd)
            case "close": return event.args[0].intValue.map(closed.contains) ?? false
            default: return true
            }
        }
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
