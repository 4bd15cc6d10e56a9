import Foundation
import Logging
import PipelineCore
import PipelineTesting
import Testing
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

/// The driver program (Fixtures/driver.c), compiled once per version of its
/// source: the binary is named by a hash of the source and reused by later
/// test runs, so runs leave one file behind, not one each.
enum Driver {
    static let path: String = {
        let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Fixtures/driver.c").path
        guard let text = FileManager.default.contents(atPath: source) else {
            preconditionFailure("cannot read \(source)")
        }
        // FNV-1a: a stable name for this version of the source.
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        // The file is named `driver` (the tests expect that comm).
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("pipelined-test-driver").appendingPathComponent(String(hash, radix: 16))
        try? FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let binary = directory.appendingPathComponent("driver").path
        if FileManager.default.isExecutableFile(atPath: binary) { return binary }
        // Build beside it and rename, so a concurrent run never runs half a file.
        let partial = directory.appendingPathComponent("partial-\(getpid())").path
        let compiler = Process()
        compiler.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        compiler.arguments = ["cc", "-O1", "-Wall", "-pthread", "-o", partial, source]
        do {
            try compiler.run()
            compiler.waitUntilExit()
        } catch {
            preconditionFailure("cannot run cc to build the test driver: \(error)")
        }
        precondition(compiler.terminationStatus == 0, "cc failed to build \(source)")
        precondition(rename(partial, binary) == 0, "cannot move the test driver into place")
        return binary
    }()

    /// What one run of the driver did.
    struct Run {
        var pid: Int32
        var status: Int32
        /// The syscall lines (not the `#` comments), in order.
        var lines: [String]
        var comments: [String]
    }

    /// Runs `driver ARGS...` to completion; with `uid`, as that user (and
    /// group), through util-linux's setpriv, which execs the driver in place.
    static func run(_ arguments: [String], uid: UInt32? = nil) throws -> Run {
        let process = Process()
        if let uid {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            process.arguments = ["--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", path] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: path)
            process.arguments = arguments
        }
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Run(pid: process.processIdentifier, status: process.terminationStatus, output: data)
    }
}

extension Driver.Run {
    init(pid: Int32, status: Int32, output: Data) {
        let all = String(decoding: output, as: UTF8.self).split(separator: "\n").map(String.init)
        self.init(pid: pid, status: status, lines: all.filter { !$0.hasPrefix("#") }, comments: all.filter { $0.hasPrefix("#") })
    }

    /// The events the kernel should report for this run: every line whose
    /// return value is not skipped, with `X-attempt` lines (a successful exec
    /// cannot report itself afterwards) standing for `X` returning 0.
    func expected(skipping skipped: [Int64] = [-2, -115], include: (String, Int64) -> Bool = { _, _ in true }) throws -> [ExpectedEvent] {
        try lines.compactMap { line in
            let expected = try ExpectedEvent(line: line)
            guard !skipped.contains(expected.retval), include(expected.name, expected.retval) else { return nil }
            return expected
        }
    }
}

/// One event as the driver reported it, with its args typed by the catalog.
struct ExpectedEvent: Equatable, CustomStringConvertible {
    var name: String
    var retval: Int64
    var args: Arguments

    init(name: String, retval: Int64, args: Arguments) {
        self.name = name
        self.retval = retval
        self.args = args
    }

    /// The successful execve that started a driver run: `path` run with
    /// `arguments` (argv[0] is the path, as the spawner passes it).
    static func spawn(_ path: String, _ arguments: [String]) -> ExpectedEvent {
        ExpectedEvent(name: "execve", retval: 0, args: Arguments([.string(path), .strings([path] + arguments, truncated: false)]))
    }

    struct ParseError: Error, CustomStringConvertible {
        var description: String
    }

    init(line: String) throws {
        var fields = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
        guard fields.count >= 2, let retval = Int64(fields[1]) else { throw ParseError(description: "bad driver line: \(line)") }
        var name = fields[0]
        if name.hasSuffix("-attempt") { name.removeLast("-attempt".count) }
        guard let kind = EventCatalog.kind(named: name) else { throw ParseError(description: "unknown event in: \(line)") }
        fields.removeFirst(2)
        guard fields.count == kind.argTypes.count else {
            throw ParseError(description: "\(name) has \(kind.argTypes.count) args, the driver wrote \(fields.count): \(line)")
        }
        var args = Arguments()
        for (type, field) in zip(kind.argTypes, fields) {
            args.append(try Self.argument(type, field))
        }
        self.init(name: name, retval: retval, args: args)
    }

    static func argument(_ type: ArgType, _ field: String) throws -> Argument {
        switch type {
        case .int:
            guard let value = Int32(field) else { throw ParseError(description: "not an int: \(field)") }
            return .int(value)
        case .string, .fileType:
            return .string(field)
        case .stringArray:
            let elements = field.split(separator: "|", omittingEmptySubsequences: false).map(String.init)
            // The kernel keeps 20 elements and marks the rest with "...".
            return elements.count > 20 ? .strings(Array(elements.prefix(20)), truncated: true) : .strings(elements, truncated: false)
        case .sockaddr:
            return .sockaddr(try socketAddress(field))
        default:
            guard let value = UInt32(field), let kind = type.flagKind else { throw ParseError(description: "not flags: \(field)") }
            return .flags(kind, value)
        }
    }

    static func socketAddress(_ field: String) throws -> SocketAddress {
        let parts = field.split(separator: " ", maxSplits: 2).map(String.init)
        switch (parts.first, parts.count) {
        case ("AF_INET", 3):
            let octets = parts[1].split(separator: ".").compactMap { UInt32($0) }
            guard octets.count == 4, let port = UInt16(parts[2]) else { break }
            return .inet(address: octets.reduce(0) { $0 << 8 | $1 }, port: port)
        case ("AF_INET6", 3):
            // Only the loopback address is used by the driver.
            guard parts[1] == "::1", let port = UInt16(parts[2]) else { break }
            return .inet6(address: IPv6Bytes(high: 0, low: 1), port: port)
        case ("AF_UNIX", 2):
            return .unix(path: parts[1])
        default:
            break
        }
        throw ParseError(description: "bad sockaddr: \(field)")
    }

    var description: String { "\(name) \(retval) \(Array(args))" }
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

/// A fresh directory for one test, removed by `remove()`.
struct TemporaryDirectory {
    let path: String

    init() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("pipelined-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        path = url.path
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: path)
    }
}
