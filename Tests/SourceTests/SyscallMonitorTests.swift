import CBPF
import Foundation
import PipelineCore
import Testing
@testable import EventSources
@testable import TestSupport

/// The kernel program as built into the package.
@Suite("embedded BPF object")
struct EmbeddedObjectTests {
    @Test func theEmbeddedObjectIsABPFELF() {
        let elf = KernelProgram.elf()
        #expect(elf.count == EmbeddedBPFObject.byteCount)
        #expect(Array(elf.prefix(4)) == [0x7F, 0x45, 0x4C, 0x46])  // "\x7fELF"
        #expect(elf.count > 64 && elf[4] == 2)  // ELFCLASS64
        #expect(elf.count > 64 && elf[5] == 1)  // little-endian
        // e_machine at offset 18: EM_BPF.
        let machine = elf.count > 20 ? UInt16(elf[18]) | UInt16(elf[19]) << 8 : 0
        #expect(machine == 247)
    }

    @Test func base64RejectsWhatIsNotBase64() {
        let good = "aGVsbG8="
        #expect(good.utf8.withContiguousStorageIfAvailable { Base64.decode(UnsafeRawBufferPointer($0)) } == Array("hello".utf8))
        for bad in ["aGVsbG8", "aGV*bG8=", "===="] {
            let decoded = bad.utf8.withContiguousStorageIfAvailable { Base64.decode(UnsafeRawBufferPointer($0)) }
            #expect(decoded == .some(nil), "\(bad)")
        }
    }

    @Test func everyEventHasItsPairsAndExitOnlyPrograms() throws {
        let object = try BPFObject(elf: KernelProgram.elf(), name: "check")
        let names = Set(object.programs.map(\.name))
        for kind in EventCatalog.all {
            for kprobe in [false, true] {
                for exit in [false, true] {
                    let name = KernelProgram.programName(kind, kprobe: kprobe, exit: exit)
                    #expect(names.contains(name), "missing \(name)")
                }
                if let name = KernelProgram.exitOnlyProgramName(kind, kprobe: kprobe) {
                    #expect(names.contains(name), "missing \(name)")
                }
            }
        }
        // The exec events keep their entry capture: no exit-only programs.
        #expect(!names.contains("tp_ret_execve") && !names.contains("kp_ret_execveat"))
        #expect(EventCatalog.all.filter { KernelProgram.exitOnlyProgramName($0, kprobe: false) == nil }.map(\.name) == ["execve", "execveat"])
    }
}

/// The `syscall_monitor` source against this machine's kernel: a driver
/// process makes known syscalls and the events must match exactly.
@Suite("syscall_monitor on the real kernel", .serialized, .enabled(if: KernelTests.enabled))
struct SyscallMonitorKernelTests {
    @Test(arguments: [SyscallMonitorOptions.Transport.perf, .ringbuf, .auto], bothCaptures)
    func connectEventsOfEveryFamily_failuresSkippedAsConfigured(transport: SyscallMonitorOptions.Transport, capture: SyscallMonitorOptions.Capture) throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let session = try TraceSession(SyscallMonitorOptions(events: [EventCatalog.kind(named: "connect")!], capture: capture, transport: transport))
        // auto: the ring buffer, which every kernel since 5.8 has.
        let kernel = KernelTests.kernelVersion
        let expectedTransport: SyscallMonitorOptions.Transport = transport != .auto ? transport : kernel >= (5, 8) ? .ringbuf : .perf
        #expect(session.source.transportInUse == expectedTransport, "kernel \(kernel)")
        let run = try Driver.run(["connect", directory.path])
        let (records, summary) = session.finish()
        #expect(run.status == 0)
        #expect(summary.failures.isEmpty)
        #expect(summary.metrics["kernel"]?.malformed == 0)

        let expected = try run.expected()
        let events = records.events(of: run.pid)
        #expect(events.map(\.expectedForm) == expected)
        // What the driver saw, so the comparison above means what it should:
        // refused, accepted, every family, and the two skipped failures.
        #expect(expected.map(\.retval) == [-111, 0, 0, 0, 0, 0])
        #expect(run.lines.contains { $0.hasPrefix("connect\t-2\t") })
        #expect(run.lines.contains { $0.hasPrefix("connect\t-115\t") })
        for event in events {
            #expect(event.comm.description == "driver")
            #expect(event.hostPpid == UInt32(getpid()))
            #expect(event.uid == getuid())
            // A host process: its own namespace's view is the host view.
            #expect(!event.isContainer && event.pidNamespace == 0 && event.mountNamespace == 0)
            #expect(event.pid == UInt32(run.pid) && event.pid == event.hostPid)
            #expect(event.ppid == UInt32(getpid()) && event.ppid == event.hostPpid)
        }
    }

    /// A few events stay far below the perf buffer's wake-up watermark: the
    /// reader must still hand them on while running (every flush
    /// interval), not only when the source stops.
    @Test(arguments: [SyscallMonitorOptions.Transport.perf, .ringbuf])
    func quietTrafficIsDeliveredWhileRunning(transport: SyscallMonitorOptions.Transport) throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let session = try TraceSession(SyscallMonitorOptions(events: [EventCatalog.kind(named: "connect")!], transport: transport))
        let run = try Driver.run(["connect", directory.path])
        let expected = try run.expected()
        let deadline = Date().addingTimeInterval(60)
        while session.sink.records.events(of: run.pid).count < expected.count, Date() < deadline {
            Thread.sleep(forTimeInterval: 0.05)
        }
        let whileRunning = session.sink.records.events(of: run.pid).map(\.expectedForm)
        _ = session.finish()
        #expect(whileRunning == expected)
    }

    /// A ring of one page: records cross its end every few dozen, and each
    /// one that does is read in two pieces (the ring is mapped once). Every
    /// event of twelve driver runs (about 10 KiB of records, so the ring
    /// goes round twice) must still arrive exactly.
    @Test func aOnePageRingReadsWrappedRecordsWhole() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let options = SyscallMonitorOptions(events: [EventCatalog.kind(named: "connect")!], transport: .ringbuf, ringbufBytes: 4096)
        let session = try TraceSession(options)
        let wrappedBefore = RingConsumer.wrappedRecords.load(ordering: .relaxed)
        var runs: [(pid: Int32, expected: [ExpectedEvent])] = []
        for _ in 0..<12 {
            // One run at a time, each drained before the next: a run's
            // records (about 700 bytes) fit the ring, so nothing is lost.
            let run = try Driver.run(["connect", directory.path])
            let expected = try run.expected()
            let deadline = Date().addingTimeInterval(60)
            while session.sink.records.events(of: run.pid).count < expected.count, Date() < deadline {
                Thread.sleep(forTimeInterval: 0.02)
            }
            runs.append((run.pid, expected))
        }
        let (records, summary) = session.finish()
        for run in runs {
            #expect(records.events(of: run.pid).map(\.expectedForm) == run.expected)
        }
        #expect(records.lostCount == 0)
        #expect(summary.metrics["kernel"]?.malformed == 0)
        #expect(RingConsumer.wrappedRecords.load(ordering: .relaxed) > wrappedBefore)
    }

    /// The header's uid is the caller's: a driver run as nobody (65534)
    /// reports that uid on every event, and root's events report 0.
    @Test(arguments: bothCaptures)
    func eventsCarryTheCallersUid(capture: SyscallMonitorOptions.Capture) throws {
        let nobodysDirectory = try TemporaryDirectory(), rootsDirectory = try TemporaryDirectory()
        defer {
            nobodysDirectory.remove()
            rootsDirectory.remove()
        }
        chmod(nobodysDirectory.path, 0o777)  // the AF_UNIX sockets are made there
        let session = try TraceSession(SyscallMonitorOptions(events: [EventCatalog.kind(named: "connect")!], capture: capture))
        let nobody = try Driver.run(["connect", nobodysDirectory.path], uid: 65534)
        let root = try Driver.run(["connect", rootsDirectory.path])
        let (records, _) = session.finish()
        #expect(nobody.status == 0 && root.status == 0)
        let asNobody = records.events(of: nobody.pid)
        #expect(asNobody.map(\.expectedForm) == (try nobody.expected()))
        #expect(!asNobody.isEmpty && asNobody.allSatisfy { $0.uid == 65534 })
        let asRoot = records.events(of: root.pid)
        #expect(!asRoot.isEmpty && asRoot.allSatisfy { $0.uid == 0 })
    }

    @Test(arguments: bothCaptures)
    func socketBindListenAcceptAndConnectArgs(capture: SyscallMonitorOptions.Capture) throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let names = ["socket", "bind", "listen", "accept", "connect"]
        let session = try TraceSession(SyscallMonitorOptions(events: names.map { EventCatalog.kind(named: $0)! }, capture: capture))
        let run = try Driver.run(["server", directory.path])
        let (records, summary) = session.finish()
        #expect(run.status == 0)
        #expect(summary.metrics["kernel"]?.malformed == 0)
        let expected = try run.expected()
        #expect(expected.count == 7)
        #expect(records.events(of: run.pid).map(\.expectedForm) == expected)
    }

    @Test(arguments: bothCaptures)
    func fileEventsWithDecodedArgs(capture: SyscallMonitorOptions.Capture) throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let names = ["open", "openat", "close", "unlink", "unlinkat", "rmdir", "chown", "fchownat"]
        let session = try TraceSession(SyscallMonitorOptions(events: names.map { EventCatalog.kind(named: $0)! }, capture: capture))
        let run = try Driver.run(["files", directory.path])
        let (records, summary) = session.finish()
        #expect(run.status == 0)
        #expect(summary.metrics["kernel"]?.malformed == 0)
        let expected = try run.expected()
        let events = try run.fileEvents(in: records.events(of: run.pid), directory: directory.path)
        #expect(events.map(\.expectedForm) == expected)
        #expect(expected.contains { $0.name == "openat" && $0.retval == -17 })
        #expect(!expected.contains { $0.name == "openat" && $0.retval == -2 })
        #expect(expected.contains { $0.name == "unlinkat" && $0.args[2] == .flags(.unlinkat, 0x200) })
    }

    @Test(arguments: bothCaptures)
    func processAndCapabilityEvents_execArgvCapturedAtEntry(capture: SyscallMonitorOptions.Capture) throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let names = ["execve", "execveat", "setuid", "setgid", "ptrace", "mount", "umount"]
        let session = try TraceSession(SyscallMonitorOptions(events: names.map { EventCatalog.kind(named: $0)! }, capture: capture))
        let run = try Driver.run(["process", directory.path, Driver.path])
        let (records, summary) = session.finish()
        #expect(run.status == 0)
        #expect(summary.metrics["kernel"]?.malformed == 0)
        // The test's own spawn of the driver is the first execve.
        let expected = try [.spawn(Driver.path, ["process", directory.path, Driver.path])] + run.expected()
        let actual = records.events(of: run.pid).map(\.expectedForm)
        #expect(actual == expected, "\(actual.map(\.description).joined(separator: "\n"))")
        #expect(expected.map(\.name) == ["execve", "setuid", "setgid", "ptrace", "mount", "umount", "execve", "execveat", "execve"])
        // The last execve had 25 args: 20 and the truncation mark.
        #expect(expected.last?.args[1] == .strings(Array(expected.last!.args[1].strings.prefix(20)), truncated: true))
    }

    /// A successful execveat returns through sys_exit_execve: traced alone,
    /// it must still be reported (and no execve with it).
    @Test(arguments: bothCaptures)
    func execveatAloneIsReported(capture: SyscallMonitorOptions.Capture) throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let session = try TraceSession(SyscallMonitorOptions(events: [EventCatalog.kind(named: "execveat")!], capture: capture))
        let run = try Driver.run(["process", directory.path, Driver.path])
        let (records, _) = session.finish()
        let expected = try run.expected { name, _ in name == "execveat" }
        #expect(expected.count == 1)
        #expect(records.events(of: run.pid).map(\.expectedForm) == expected)
    }

    /// A thread other than the leader execs: the failed execve and the
    /// successful one (which leaves with the leader's id) are both reported,
    /// with the argv captured at entry, under the process's pid.
    @Test(arguments: bothCaptures)
    func execFromAThreadOtherThanTheLeaderIsReported(capture: SyscallMonitorOptions.Capture) throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let session = try TraceSession(SyscallMonitorOptions(events: [EventCatalog.kind(named: "execve")!], capture: capture))
        let run = try Driver.run(["thread-exec", directory.path, Driver.path])
        let (records, summary) = session.finish()
        #expect(run.status == 0)
        #expect(summary.metrics["kernel"]?.malformed == 0)
        // The exec really came from another thread than the leader.
        let thread = try #require(run.comments.first { $0.hasPrefix("# thread ") })
        #expect(thread != "# thread \(run.pid) of \(run.pid)" && thread.hasSuffix(" of \(run.pid)"), "\(thread)")
        let expected = try [.spawn(Driver.path, ["thread-exec", directory.path, Driver.path])] + run.expected()
        #expect(expected.map(\.retval) == [0, -13, 0])
        let actual = records.events(of: run.pid).map(\.expectedForm)
        #expect(actual == expected, "\(actual.map(\.description).joined(separator: "\n"))")
    }

    /// Inside new pid and mount namespaces (`unshare`), events carry the
    /// namespace's pids and ids: a container's view.
    @Test(arguments: bothCaptures)
    func namespacePidsAndIdsInsideNewNamespaces(capture: SyscallMonitorOptions.Capture) throws {
        let session = try TraceSession(SyscallMonitorOptions(events: [EventCatalog.kind(named: "connect")!], capture: capture))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["unshare", "--pid", "--mount", "--fork", Driver.path, "fork-connect"]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let (records, _) = session.finish()
        let run = Driver.Run(pid: process.processIdentifier, status: process.terminationStatus, output: data)
        #expect(run.status == 0)

        let ns = try #require(run.comments.first { $0.hasPrefix("# ns ") }).split(separator: " ").compactMap { UInt32($0) }
        let child = try #require(run.comments.first { $0.hasPrefix("# child ") }.flatMap { UInt32($0.split(separator: " ").last!) })
        try #require(ns.count == 2)
        #expect(run.comments.contains("# pid 1"))
        // unshare forks the driver: the driver's parent is unshare.
        let driver = records.compactMap { record -> SyscallEvent? in
            if case .event(let event) = record, event.hostPpid == UInt32(process.processIdentifier), event.comm.description == "driver" { return event }
            return nil
        }
        let driverPid = try #require(driver.first?.hostPid)
        let childEvents = records.compactMap { record -> SyscallEvent? in
            if case .event(let event) = record, event.hostPpid == driverPid { return event }
            return nil
        }
        #expect(driver.map(\.expectedForm) == [try run.expected()[0]])
        #expect(childEvents.map(\.expectedForm) == [try run.expected()[1]])
        for event in driver + childEvents {
            #expect(event.pidNamespace == ns[0])
            #expect(event.mountNamespace == ns[1])
            #expect(event.isContainer)
        }
        #expect(driver.first?.pid == 1)
        #expect(driver.first?.ppid == 0)  // unshare is outside the namespace
        #expect(childEvents.first?.pid == child)
        #expect(childEvents.first?.ppid == 1)
    }

    @Test(arguments: bothCaptures)
    func hiddenNetworkScopeDropsSuccessfulConnectsOnly(capture: SyscallMonitorOptions.Capture) throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let session = try TraceSession(SyscallMonitorOptions(events: [EventCatalog.kind(named: "connect")!], capture: capture, visibility: [.network: false]))
        let run = try Driver.run(["connect", directory.path])
        let (records, _) = session.finish()
        let expected = try run.expected { _, retval in retval < 0 }
        #expect(expected.map(\.retval) == [-111])
        #expect(records.events(of: run.pid).map(\.expectedForm) == expected)
    }

    @Test(arguments: bothCaptures)
    func skipRetvalsIsConfigurable(capture: SyscallMonitorOptions.Capture) throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        // Skip refused instead of ENOENT/EINPROGRESS.
        let session = try TraceSession(SyscallMonitorOptions(events: [EventCatalog.kind(named: "connect")!], capture: capture, skipRetvals: [-111]))
        let run = try Driver.run(["connect", directory.path])
        let (records, _) = session.finish()
        let expected = try run.expected(skipping: [-111])
        #expect(expected.contains { $0.retval == -2 } && expected.contains { $0.retval == -115 })
        #expect(records.events(of: run.pid).map(\.expectedForm) == expected)
    }

    @Test(arguments: bothCaptures)
    func concurrentProcessesKeepTheirOwnEvents(capture: SyscallMonitorOptions.Capture) throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let first = try TemporaryDirectory(), second = try TemporaryDirectory()
        defer { first.remove(); second.remove() }
        let session = try TraceSession(SyscallMonitorOptions(events: [EventCatalog.kind(named: "connect")!, EventCatalog.kind(named: "socket")!], capture: capture))
        let runs = try [first, second].concurrentMap { try Driver.run(["connect", $0.path]) }
        let (records, _) = session.finish()
        for run in runs {
            let connects = records.events(of: run.pid).filter { $0.kind?.name == "connect" }
            #expect(connects.map(\.expectedForm) == (try run.expected()))
            #expect(records.events(of: run.pid).allSatisfy { $0.comm.description == "driver" })
        }
        #expect(runs[0].pid != runs[1].pid)
    }

    @Test func attachKprobeNamesWhyItCannot_autoFallsBackToTracepoints() throws {
        let connect = EventCatalog.kind(named: "connect")!
        if KernelSupport.hasKprobes() {
            let session = try TraceSession(SyscallMonitorOptions(events: [connect], attach: .kprobe))
            #expect(session.source.attachments.map(\.mode) == [.kprobe])
            _ = session.finish()
        } else {
            let error = #expect(throws: StageStartError.self) {
                _ = try TraceSession(SyscallMonitorOptions(events: [connect], attach: .kprobe))
            }
            #expect(error?.exitCode == 1)
            #expect(error?.message.contains("attach: kprobe") == true)
            #expect(error?.message.contains("no kprobes") == true)
            #expect(error?.stage == "kernel")
        }
        let session = try TraceSession(SyscallMonitorOptions(events: [connect, EventCatalog.kind(named: "umount")!], attach: .auto))
        let modes = session.source.attachments
        _ = session.finish()
        #expect(modes.map(\.event) == ["connect", "umount"])
        #expect(modes.allSatisfy { $0.mode == (KernelSupport.hasKprobes() ? .kprobe : .tracepoint) })
    }

    /// This kernel cannot attach kprobes, but it can still verify the
    /// kprobe/kretprobe programs: load them all (without attaching).
    @Test func kprobeProgramsPassTheVerifier() throws {
        let object = try BPFObject(elf: KernelProgram.elf(), name: "kprobes")
        var loaded = 0
        for program in object.programs {
            let kprobe = program.name.hasPrefix("kp_")
            if kprobe { loaded += 1 }
            #expect(bpf_program__set_autoload(program.program, kprobe) == 0)
        }
        #expect(bpf_map__set_max_entries(try object.map(named: KernelProgram.Map.ringbuf), 4096) == 0)
        try object.load()
        // The pairs of every event, and the exit-only kretprobes (bpf_task_pt_regs).
        #expect(loaded == EventCatalog.all.count * 2 + EventCatalog.all.filter(KernelProgram.hasExitOnlyPrograms).count)
        for program in object.programs where program.name.hasPrefix("kp_") {
            #expect(bpf_program__fd(program.program) >= 0, "\(program.name) not loaded")
        }
    }

    @Test(arguments: bothCaptures)
    func everyEventLoadsAndAttachesAsTracepoints(capture: SyscallMonitorOptions.Capture) throws {
        let session = try TraceSession(SyscallMonitorOptions(attach: .tracepoint, capture: capture))
        let modes = session.source.attachments
        let captures = session.source.captures
        _ = session.finish()
        #expect(modes.map(\.event) == EventCatalog.all.map(\.name))
        let resolved = KernelTests.resolved(capture)
        for (event, path) in captures {
            #expect(path == (event.hasPrefix("execve") ? .entry : resolved), "\(event)")
        }
    }

    /// A buffer far too small for a burst: every event the driver made is
    /// either delivered or counted in a lost record. ptrace is an event
    /// nothing else on the machine makes, so every loss is the driver's.
    @Test(arguments: [SyscallMonitorOptions.Transport.perf, .ringbuf])
    func aTinyBufferAccountsForEveryEvent(transport: SyscallMonitorOptions.Transport) throws {
        let ptrace = EventCatalog.kind(named: "ptrace")!
        let options = SyscallMonitorOptions(events: [ptrace], transport: transport, bufferPages: 1, ringbufBytes: 4096)
        // The sink stalls through the burst: the reader cannot drain the
        // kernel buffer, however fast this machine is, so losses are certain.
        let session = try TraceSession(options, stalled: true)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Driver.path)
        process.arguments = ["burst", "20000"]
        let input = Pipe(), output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        let reader = LineReaderThread(output.fileHandleForReading)
        _ = reader.waitFor(prefix: "# burst", deadlineSeconds: 60)
        session.sink.release()
        // A perf buffer writes its count of lost samples only before the
        // next sample that fits: make a PTRACE_DETACH call (driver.c) at a
        // time until one is delivered; every loss before it is then counted.
        let child = process.processIdentifier
        func flushDelivered() -> Bool {
            session.sink.records.events(of: child).contains { $0.args.first == .flags(.ptraceRequest, 17) }
        }
        var flushes = 0
        while !flushDelivered(), flushes < 50 {
            input.fileHandleForWriting.write(Data("flush\n".utf8))
            flushes += 1
            _ = reader.waitFor(prefix: "# flushed \(20000 + flushes)", deadlineSeconds: 30)
            let deadline = Date().addingTimeInterval(2)
            while !flushDelivered(), Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
        }
        try input.fileHandleForWriting.close()
        let total = reader.waitFor(prefix: "# total", deadlineSeconds: 30).flatMap { UInt64($0.split(separator: " ").last!) }
        process.waitUntilExit()
        let (records, summary) = session.finish()

        let made = try #require(total)
        let delivered = UInt64(records.events(of: process.processIdentifier).filter { $0.kind == ptrace }.count)
        let lost = records.lostCount
        #expect(flushDelivered())
        #expect(made == 20000 + UInt64(flushes))
        #expect(lost > 0)
        #expect(delivered + lost == made)
        #expect(summary.metrics["kernel"]?.lostTotal == lost)
        #expect(summary.metrics["kernel"]?.malformed == 0)
    }
}

/// Reads a child's stdout lines on a thread of its own.
/// `@unchecked Sendable`: `lines` is only touched with `lock` held.
final class LineReaderThread: @unchecked Sendable {
    // Guarded by `lock`.
    private var lines: [String] = []
    private let lock = NSCondition()

    init(_ handle: FileHandle) {
        let thread = Thread { [self] in
            var buffer = Data()
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                buffer.append(chunk)
                while let newline = buffer.firstIndex(of: 0x0A) {
                    let line = String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self)
                    buffer.removeSubrange(buffer.startIndex...newline)
                    lock.lock()
                    lines.append(line)
                    lock.broadcast()
                    lock.unlock()
                }
            }
        }
        thread.start()
    }

    /// The first line starting with `prefix`, waiting up to the deadline.
    func waitFor(prefix: String, deadlineSeconds: Double) -> String? {
        let deadline = Date().addingTimeInterval(deadlineSeconds)
        lock.lock()
        defer { lock.unlock() }
        while true {
            if let line = lines.first(where: { $0.hasPrefix(prefix) }) { return line }
            if !lock.wait(until: deadline) { return nil }
        }
    }
}

extension Argument {
    func isPath(under directory: String) -> Bool {
        if case .string(let path) = self { return path.hasPrefix(directory + "/") }
        return false
    }

    var intValue: Int32? {
        if case .int(let value) = self { return value }
        return nil
    }

    var strings: [String] {
        if case .strings(let values, _) = self { return values }
        return []
    }
}

extension Array {
    /// Maps on one thread per element (for child processes that must overlap).
    func concurrentMap<T>(_ transform: @escaping @Sendable (Element) throws -> T) throws -> [T] where Element: Sendable, T: Sendable {
        let results = ResultBox<T>(count: count)
        let threads = enumerated().map { index, element in
            Thread {
                results.set(index, Result { try transform(element) })
            }
        }
        threads.forEach { $0.start() }
        return try results.wait().map { try $0.get() }
    }
}

/// Results of `concurrentMap`, filled from several threads.
/// `@unchecked Sendable`: `values` is only touched with `lock` held.
final class ResultBox<T: Sendable>: @unchecked Sendable {
    // Guarded by `lock`.
    private var values: [Result<T, Error>?]
    private let lock = NSCondition()

    init(count: Int) { values = Array(repeating: nil, count: count) }

    func set(_ index: Int, _ value: Result<T, Error>) {
        lock.lock()
        values[index] = value
        lock.broadcast()
        lock.unlock()
    }

    func wait() -> [Result<T, Error>] {
        lock.lock()
        defer { lock.unlock() }
        while values.contains(where: { $0 == nil }) { lock.wait() }
        return values.map { $0! }
    }
}
