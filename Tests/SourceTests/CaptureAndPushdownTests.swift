import CBPF
import Foundation
import Logging
import PipelineCore
import Testing
@testable import EventSources
@testable import TestSupport

/// A pushed-down condition in the kernel program's terms, without a kernel.
@Suite("pushdown into the kernel program's tables")
struct KernelConditionTests {
    static let connect = EventCatalog.kind(named: "connect")!
    static let socket = EventCatalog.kind(named: "socket")!

    /// The program's test (bpf/pipelined.bpf.c, keep_record), on the tables
    /// a condition compiles to.
    static func kernelKeeps(_ keep: KernelCondition, eventID: UInt32, retval: Int64, isContainer: Bool) -> Bool {
        let on = keep.enabledValue(eventID)
        guard on != 0 else { return false }
        let mask = on & ~PL_EVENT_ON
        if mask == 0 { return true }
        return keep.clauses.enumerated().contains { index, clause in
            guard mask & (1 << UInt32(index)) != 0 else { return false }
            if retval < clause.min || retval > clause.max || clause.excluded.contains(retval) { return false }
            if let values = clause.values, !values.contains(retval) { return false }
            if let origin = clause.origin, (origin == .container) != isContainer { return false }
            return true
        }
    }

    /// Every (event, retval, origin) of a small grid: the kernel keeps at
    /// least what the condition keeps, and exactly that when its tables hold it.
    static func expectKernelKeepsTheCondition(_ condition: KeepCondition, configured: [EventKind], exact: Bool) {
        let keep = KernelCondition(condition, configured: configured)
        for kind in configured {
            for retval: Int64 in [-115, -111, -13, -2, -1, 0, 1, 3, 7, 1000] {
                for isContainer in [false, true] {
                    let wanted = condition.matches(eventID: kind.id, retval: retval, isContainer: isContainer)
                    let kept = kernelKeeps(keep, eventID: kind.id, retval: retval, isContainer: isContainer)
                    if wanted { #expect(kept, "\(condition): \(kind.name) \(retval) \(isContainer)") }
                    if exact { #expect(kept == wanted, "\(condition): \(kind.name) \(retval) \(isContainer)") }
                }
            }
        }
    }

    @Test func everythingTestsNothingAndAttachesEverything() {
        let keep = KernelCondition(.everything, configured: EventCatalog.all)
        #expect(keep.events == EventCatalog.all)
        #expect(keep.clauses.isEmpty)
        #expect(EventCatalog.all.allSatisfy { keep.enabledValue($0.id) == PL_EVENT_ON })
        #expect(keep.report.pushed == ["events: all \(EventCatalog.all.count) configured attached", "retval/origin: nothing to test (every kept event is kept whole)"])
        #expect(keep.report.remaining.isEmpty)
        // The map holds no clause a mask could select.
        let value = keep.mapValue
        #expect(value.clauses.0.in_count == 0 && value.clauses.0.min == 0)
    }

    @Test func nothingAttachesNothing() {
        let keep = KernelCondition(.nothing, configured: [Self.connect])
        #expect(keep.events.isEmpty)
        #expect(keep.enabledValue(Self.connect.id) == 0)
        #expect(keep.report.pushed == ["events: none attached (no sink keeps a record of this source)"])
    }

    @Test func failuresOfOneEvent() {
        let condition = KeepCondition([KeepClause(events: [Self.connect.id], retvalMax: -1)])
        let keep = KernelCondition(condition, configured: [Self.socket, Self.connect])
        #expect(keep.events == [Self.connect])
        #expect(keep.enabledValue(Self.socket.id) == 0)
        #expect(keep.enabledValue(Self.connect.id) == PL_EVENT_ON | 1)
        let slot = keep.mapValue.clauses.0
        #expect(slot.min == .min && slot.max == -1 && slot.in_count == PL_KEEP_IN_ANY && slot.not_in_count == 0)
        #expect(slot.origin == PL_KEEP_ANY.rawValue)
        #expect(keep.report.pushed == [
            "events: attach only [connect] (1 of 2 configured)",
            "retval/origin at exit: keep (events [connect], retval < 0 (failure))",
        ])
        Self.expectKernelKeepsTheCondition(condition, configured: [Self.socket, Self.connect], exact: true)
    }

    @Test func anEventKeptWholeBesideOneThatIsTested() {
        let condition = KeepCondition([KeepClause(events: [Self.connect.id], retvalIn: [-111, -13]), KeepClause(events: [Self.socket.id])])
        let keep = KernelCondition(condition, configured: [Self.socket, Self.connect])
        #expect(keep.enabledValue(Self.socket.id) == PL_EVENT_ON)
        #expect(keep.enabledValue(Self.connect.id) == PL_EVENT_ON | 1)
        #expect(keep.clauses.count == 1)
        let slot = keep.mapValue.clauses.0
        #expect(slot.in_count == 2 && slot.in_values.0 == -111 && slot.in_values.1 == -13)
        #expect(keep.report.pushed.last == "kept whole: [socket]")
        Self.expectKernelKeepsTheCondition(condition, configured: [Self.socket, Self.connect], exact: true)
    }

    /// Two paths, one keeping everything and one failures: the union keeps
    /// everything, so nothing about retval is pushed.
    @Test func aPathKeepingEverythingPushesNoRetvalTest() {
        let condition = KeepCondition.everything.union(KeepCondition([KeepClause(retvalMax: -1)]))
        let keep = KernelCondition(condition, configured: [Self.connect])
        #expect(keep.clauses.isEmpty && keep.enabledValue(Self.connect.id) == PL_EVENT_ON)
    }

    @Test func everyKindOfClauseKeepsExactlyWhatItSays() {
        let connect = Self.connect.id
        let conditions: [KeepCondition] = [
            KeepCondition([KeepClause(retvalMin: 0)]),
            KeepCondition([KeepClause(retvalMin: -13, retvalMax: 3)]),
            KeepCondition([KeepClause(retvalIn: [-111])]),
            KeepCondition([KeepClause(retvalNotIn: [0, -2])]),
            KeepCondition([KeepClause(origin: .container)]),
            KeepCondition([KeepClause(origin: .host), KeepClause(events: [connect], retvalMax: -1, origin: .container)]),
            KeepCondition([KeepClause(events: [connect], retvalMin: 1), KeepClause(retvalIn: [-13, -2])]),
        ]
        for condition in conditions {
            Self.expectKernelKeepsTheCondition(condition, configured: [Self.socket, Self.connect], exact: true)
        }
        let origin = KernelCondition(conditions[4], configured: [Self.connect]).mapValue.clauses.0
        #expect(origin.origin == PL_KEEP_CONTAINER.rawValue)
    }

    /// Longer lists than the program's tables: widened, never narrowed, and
    /// the report says what stays for the filters.
    @Test func listsLongerThanTheKernelsTablesAreWidened() {
        let many = Set((1...10).map { -Int64($0) })
        let listed = KeepCondition([KeepClause(retvalIn: many)])
        let keep = KernelCondition(listed, configured: [Self.connect])
        let clause = try! #require(keep.clauses.first)
        #expect(clause.values == nil && clause.min == -10 && clause.max == -1)
        #expect(keep.report.remaining == ["retval one of 10 values [-10, -9, -8, -7, -6, -5, -4, -3, -2, -1]: the kernel lists at most 8, so it keeps -10...-1"])
        Self.expectKernelKeepsTheCondition(listed, configured: [Self.connect], exact: false)

        let excluded = KeepCondition([KeepClause(retvalNotIn: many)])
        let widened = KernelCondition(excluded, configured: [Self.connect])
        #expect(widened.clauses.first?.excluded == (-10...(-3)).map { Int64($0) })
        #expect(widened.report.remaining == ["retval none of [-2, -1]: past the kernel's 8 exclusions"])
        Self.expectKernelKeepsTheCondition(excluded, configured: [Self.connect], exact: false)
    }

    /// The Swift side writes `struct pl_keep` as the program reads it.
    @Test func theKeepLayoutIsTheHeaders() {
        #expect(MemoryLayout<pl_keep_clause>.size == 160)
        #expect(MemoryLayout<pl_keep>.size == 160 * KernelCondition.maxClauses)
        #expect(KernelCondition.maxClauses == KeepCondition.maxClauses)
        #expect(MemoryLayout<pl_keep_clause>.offset(of: \.in_count) == 144)
    }

    @Test func pushIsPureAndReportsTheKernelForm() {
        let source = SyscallMonitorSource(SyscallMonitorOptions(events: [Self.connect]))
        let condition = KeepCondition([KeepClause(retvalMax: -1)])
        let report = source.push(condition)
        #expect(report == KernelCondition(condition, configured: [Self.connect]).report)
        #expect(source.pushedCondition == condition)
        #expect(source.attachments.isEmpty)
    }
}

/// The two capture paths and the pushed-down condition against this
/// machine's kernel.
@Suite("syscall_monitor captures and pushdown on the real kernel", .serialized, .enabled(if: KernelTests.enabled))
struct CaptureAndPushdownKernelTests {
    static let connect = EventCatalog.kind(named: "connect")!
    static let socket = EventCatalog.kind(named: "socket")!

    /// Both paths trace the same syscalls at once: every record of the
    /// driver's scenarios must be the same under both, field by field
    /// (the time each program built its record aside).
    @Test func recordsAreTheSameUnderBothCaptures() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let entry = try TraceSession(SyscallMonitorOptions(capture: .entry))
        let exit = try TraceSession(SyscallMonitorOptions(capture: .auto))
        var runs: [Driver.Run] = []
        for scenario in ["connect", "server", "files"] {
            let scenarioDirectory = directory.path + "/" + scenario
            try FileManager.default.createDirectory(atPath: scenarioDirectory, withIntermediateDirectories: true)
            runs.append(try Driver.run([scenario, scenarioDirectory]))
        }
        runs.append(try Driver.run(["process", directory.path, Driver.path]))
        let (entryRecords, entrySummary) = entry.finish()
        let (exitRecords, exitSummary) = exit.finish()
        #expect(entrySummary.metrics["kernel"]?.malformed == 0 && exitSummary.metrics["kernel"]?.malformed == 0)
        #expect(entryRecords.lostCount == 0 && exitRecords.lostCount == 0)
        for run in runs {
            #expect(run.status == 0)
            let (viaEntry, viaExit) = (entryRecords.events(of: run.pid), exitRecords.events(of: run.pid))
            #expect(viaEntry.count > 5)
            #expect(viaEntry.map(\.untimed) == viaExit.map(\.untimed), "\(run.lines.first ?? "")")
            for (a, b) in zip(viaEntry, viaExit) where a.untimed != b.untimed {
                Issue.record("entry \(a.expectedForm) vs exit \(b.expectedForm)")
            }
        }
    }

    /// Where the kernel can read the args at exit, `capture: exit` does;
    /// where it cannot, it says why.
    @Test func captureExitWorksOrSaysWhyNot() throws {
        if let reason = KernelSupport.exitCaptureUnavailableReason(kprobes: false) {
            let error = #expect(throws: StageStartError.self) {
                _ = try TraceSession(SyscallMonitorOptions(events: [Self.connect], attach: .tracepoint, capture: .exit))
            }
            #expect(error?.message.contains("capture: exit is impossible") == true, "\(reason)")
        } else {
            let session = try TraceSession(SyscallMonitorOptions(events: [Self.connect], attach: .tracepoint, capture: .exit))
            #expect(session.source.captures.map(\.capture) == [.exit])
            _ = session.finish()
        }
    }

    /// Only connect's failures are wanted: socket is not attached, and the
    /// kernel submits the refused connect alone. The same child seen at the
    /// same time by a source with nothing pushed, filtered in user space,
    /// gives the same events.
    @Test(arguments: bothCaptures)
    func failuresOnlyAreSubmitted(capture: SyscallMonitorOptions.Capture) throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let condition = KeepCondition([KeepClause(events: [Self.connect.id], retvalMax: -1)])
        let options = SyscallMonitorOptions(events: [Self.socket, Self.connect], capture: capture)
        let pushed = try TraceSession(options, push: condition)
        let whole = try TraceSession(options)
        #expect(pushed.source.attachments.map(\.event) == ["connect"])
        #expect(pushed.source.tracedEvents == [Self.connect])
        let run = try Driver.run(["connect", directory.path])
        let (records, summary) = pushed.finish()
        let (all, _) = whole.finish()
        #expect(run.status == 0)

        let expected = try run.expected { _, retval in retval < 0 }
        #expect(expected.map(\.retval) == [-111])
        #expect(records.events(of: run.pid).map(\.expectedForm) == expected)
        // What the source counted is what the kernel submitted, and every
        // record of any process satisfies the condition.
        #expect(summary.metrics["kernel"]?.recordsOut == UInt64(records.count))
        for record in records {
            guard case .event(let event) = record else { continue }
            #expect(condition.matches(eventID: event.eventID, retval: event.retval, isContainer: event.isContainer), "\(event.expectedForm)")
        }
        let filtered = all.events(of: run.pid).filter { condition.matches(eventID: $0.eventID, retval: $0.retval, isContainer: $0.isContainer) }
        #expect(records.events(of: run.pid).map(\.untimed) == filtered.map(\.untimed))
        #expect(all.events(of: run.pid).count > filtered.count)
    }

    /// `origin: container` is tested in the kernel: the host driver's
    /// connects are not submitted, those inside new namespaces are.
    @Test(arguments: bothCaptures)
    func originIsTestedInTheKernel(capture: SyscallMonitorOptions.Capture) throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let session = try TraceSession(SyscallMonitorOptions(events: [Self.connect], capture: capture), push: KeepCondition([KeepClause(origin: .container)]))
        let host = try Driver.run(["connect", directory.path])
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["unshare", "--pid", "--mount", "--fork", Driver.path, "fork-connect"]
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        let (records, _) = session.finish()
        #expect(host.status == 0 && process.terminationStatus == 0)
        #expect(records.events(of: host.pid).isEmpty)
        let contained = records.compactMap { record -> SyscallEvent? in
            if case .event(let event) = record, event.comm.description == "driver" { return event }
            return nil
        }
        #expect(contained.count == 2)
        #expect(records.allSatisfy { record in
            if case .event(let event) = record { return event.isContainer }
            return true
        })
    }

    /// A reload whose graph keeps more: the running source takes the
    /// replacement's condition, loads and attaches socket (not attached
    /// before), and its connects now come through when they succeed only.
    @Test(arguments: bothCaptures)
    func aReloadTakesTheNewCondition(capture: SyscallMonitorOptions.Capture) throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let options = SyscallMonitorOptions(events: [Self.socket, Self.connect], capture: capture)
        let session = try TraceSession(options, push: KeepCondition([KeepClause(events: [Self.connect.id], retvalMax: -1)]))
        let before = try Driver.run(["connect", directory.path])
        #expect(session.source.attachments.map(\.event) == ["connect"])

        let replacement = SyscallMonitorSource(options)
        let condition = KeepCondition([KeepClause(events: [Self.socket.id]), KeepClause(events: [Self.connect.id], retvalMin: 0)])
        _ = replacement.push(condition)
        let context = StageContext(id: "kernel", logger: KernelTests.logger, metrics: StageMetrics())
        #expect(try session.source.reconfigure(like: replacement, context: context))
        #expect(session.source.attachments.map(\.event) == ["connect", "socket"])
        #expect(session.source.pushedCondition == condition)
        let after = try Driver.run(["connect", directory.path])
        let (records, _) = session.finish()

        #expect(records.events(of: before.pid).map(\.expectedForm) == (try before.expected { _, retval in retval < 0 }))
        let later = records.events(of: after.pid)
        #expect(later.filter { $0.kind == Self.connect }.map(\.expectedForm) == (try after.expected { _, retval in retval >= 0 }))
        #expect(later.contains { $0.kind == Self.socket })
        #expect(later.allSatisfy { condition.matches(eventID: $0.eventID, retval: $0.retval, isContainer: false) })
    }

    /// The source's own process (here the test's, as `pipelined run`'s in
    /// the daemon) is never traced on either path: its files and sockets
    /// make no event, a child's do.
    @Test(arguments: bothCaptures)
    func ownProcessMakesNoEvents(capture: SyscallMonitorOptions.Capture) throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let names = ["openat", "close", "socket", "connect"]
        let session = try TraceSession(SyscallMonitorOptions(events: names.map { EventCatalog.kind(named: $0)! }, capture: capture))
        // Our own: a file opened and closed, a UDP socket connected.
        let fd = open(directory.path + "/own", O_CREAT | O_WRONLY, 0o600)
        #expect(fd >= 0)
        close(fd)
        let udp = Glibc.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        var peer = sockaddr_in()
        peer.sin_family = sa_family_t(AF_INET)
        peer.sin_port = UInt16(9).bigEndian
        peer.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let connected = withUnsafePointer(to: &peer) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(udp, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        #expect(connected == 0)
        close(udp)
        let run = try Driver.run(["connect", directory.path])
        let (records, _) = session.finish()
        #expect(records.events(of: getpid()).isEmpty)
        #expect(records.events(of: run.pid).filter { $0.kind == Self.connect }.map(\.expectedForm) == (try run.expected()))
    }
}
