import Foundation
import Logging
import PipelineCore
import PipelineTesting
import Testing
@testable import EventSources
@testable import TestSupport

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
    /// `push`: a condition handed to the source before it is prepared, as
    /// the runtime does with what the pipeline's filters keep.
    init(_ options: SyscallMonitorOptions, stalled: Bool = false, push condition: KeepCondition? = nil) throws {
        source = SyscallMonitorSource(options)
        if let condition { _ = source.push(condition) }
        sink = MemorySink(stalled: stalled)
        let queue = stalled ? QueuePolicy(capacityEvents: 16, whenFull: .block) : QueuePolicy()
        // A condition of the test's own: the runtime must not push the
        // harness graph's (everything) over it.
        var settings = PipelineSettings()
        settings.pushdown = condition == nil
        let plan = StageHarness.plan(sources: [("kernel", source)], sinks: [("memory", sink, queue)], settings: settings)
        runtime = PipelineRuntime(plan: plan, logger: KernelTests.logger)
        try runtime.start()
        #expect(source.captureInUse == KernelTests.resolved(options.capture), "kernel \(KernelTests.kernelVersion)")
    }

    /// Stops the source (which detaches and drains the kernel buffers) and
    /// returns every record the sink received.
    func finish() -> (records: [PipelineRecord], summary: RunSummary) {
        runtime.stop()
        let summary = runtime.wait()
        return (sink.records, summary)
    }
}

/// The capture paths the exact-event tests run under: the default (exit-only
/// on a kernel with bpf_task_pt_regs) and the entry capture, forced.
let bothCaptures: [SyscallMonitorOptions.Capture] = [.auto, .entry]

extension KernelTests {
    /// What `capture` resolves to on this kernel: `auto` is exit-only from 5.15.
    static func resolved(_ capture: SyscallMonitorOptions.Capture) -> SyscallMonitorOptions.Capture {
        capture != .auto ? capture : kernelVersion >= (5, 15) ? .exit : .entry
    }
}

extension SyscallEvent {
    /// The event without what differs between two programs that saw the
    /// same syscall: when each built its record.
    var untimed: SyscallEvent {
        var event = self
        event.timeNs = 0
        event.ktimeNs = 0
        return event
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
