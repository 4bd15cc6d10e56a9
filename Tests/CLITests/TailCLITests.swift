import EventSinks
import Foundation
import Logging
import PipelineCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The built `pipelined` binary: beside the test bundle, or in `.build/debug`.
func pipelinedBinary() throws -> String {
    var candidates: [String] = []
    if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
        candidates.append((exe as NSString).deletingLastPathComponent + "/pipelined")
    }
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    candidates.append(root + "/.build/debug/pipelined")
    guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
        throw BinaryNotFound(candidates: candidates)
    }
    return found
}

struct BinaryNotFound: Error, CustomStringConvertible {
    var candidates: [String]
    var description: String { "pipelined is not built (looked at \(candidates.joined(separator: ", "))): run swift build first" }
}

/// A child process whose stdout and stderr are collected as they arrive.
final class Child: @unchecked Sendable {
    // `@unchecked Sendable`: the buffers are guarded by `lock`; `process` is
    // only started and waited on.
    let process = Process()
    private let lock = ConditionLock()
    private var out: [UInt8] = []
    private var err: [UInt8] = []
    private var openStreams = 2

    init(_ executable: String, _ arguments: [String], setprivAs uid: Int? = nil) throws {
        if let uid {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            process.arguments = ["--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", executable] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = arguments
        }
        let stdout = Pipe(), stderr = Pipe()
        process.standardOutput = stdout
        process.standardError = stderr
        process.standardInput = FileHandle.nullDevice
        try process.run()
        collect(stdout.fileHandleForReading) { self.out += $0 }
        collect(stderr.fileHandleForReading) { self.err += $0 }
    }

    private func collect(_ handle: FileHandle, _ append: @escaping @Sendable ([UInt8]) -> Void) {
        let fd = handle.fileDescriptor
        _ = RuntimeThread(name: "child-output") { [self] in
            var buffer = [UInt8](repeating: 0, count: 1 << 16)
            while true {
                let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if count < 0, errno == EINTR { continue }
                if count <= 0 { break }
                lock.withLock { append(Array(buffer[0..<count])) }
                lock.broadcast()
            }
            withExtendedLifetime(handle) {}
            lock.withLock { openStreams -= 1 }
            lock.broadcast()
        }
    }

    /// Waits until stdout holds `count` bytes (generous deadline).
    @discardableResult
    func waitForOutput(bytes count: Int, seconds: Int64 = 60) -> Bool {
        let deadline = Clock.monotonicNs() + seconds * 1_000_000_000
        return lock.withLock {
            while out.count < count {
                if Clock.monotonicNs() >= deadline { return false }
                lock.wait(untilMonotonicNs: min(deadline, Clock.monotonicNs() + 100_000_000))
            }
            return true
        }
    }

    /// Waits for exit and for both streams to end; returns the exit status.
    func finish() -> Int32 {
        process.waitUntilExit()
        // Bounded: a stream held open by some other child must not hang the suite.
        let deadline = Clock.monotonicNs() + 60_000_000_000
        lock.withLock { while openStreams > 0, Clock.monotonicNs() < deadline { lock.wait(untilMonotonicNs: Clock.monotonicNs() + 100_000_000) } }
        return process.terminationStatus
    }

    var stdout: [UInt8] { lock.withLock { out } }
    var stderr: String { lock.withLock { String(decoding: err, as: UTF8.self) } }
}

@Suite("pipelined tail")
struct TailCLITests {
    let directory: String
    let binary: String

    init() throws {
        directory = "/tmp/pl-tail-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        binary = try pipelinedBinary()
    }

    private func context() -> StageContext {
        StageContext(id: "live", logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }), metrics: StageMetrics())
    }

    private func events(_ count: Int) -> [PipelineRecord] {
        (0..<count).map { .event(StageHarness.event("connect", retval: -111, timeNs: 1_795_000_000_000_000_000 + Int64($0))) }
    }

    private func encoded(_ records: [PipelineRecord]) -> [UInt8] {
        var bytes: [UInt8] = []
        NDJSONEncoder().encode(EventBatch(records), into: &bytes)
        return bytes
    }

    private func waitFor(_ condition: () -> Bool) -> Bool {
        let deadline = Clock.monotonicNs() + 60_000_000_000
        while !condition() {
            if Clock.monotonicNs() >= deadline { return false }
            Clock.sleep(ns: 2_000_000)
        }
        return true
    }

    private func serve(_ path: String, allowUIDs: [UInt32] = UnixSocketSinkOptions.defaultAllowUIDs) throws -> UnixSocketSink {
        let sink = UnixSocketSink(UnixSocketSinkOptions(path: path, allowUIDs: allowUIDs))
        try sink.open(context())
        return sink
    }

    @Test func printsEveryLineUntilTheSinkCloses_thenExitsZero() throws {
        let path = directory + "/t.sock"
        let sink = try serve(path)
        let tail = try Child(binary, ["tail", path])
        #expect(waitFor { sink.clients.connected.load(ordering: .relaxed) == 1 })
        let input = events(5000)
        for start in stride(from: 0, to: input.count, by: 250) {
            try sink.write(EventBatch(Array(input[start..<start + 250])))
        }
        try sink.close()
        #expect(tail.finish() == 0)
        #expect(tail.stdout == encoded(input))
        #expect(tail.stderr.isEmpty)
    }

    @Test func sigintEndsTailWithStatusZero() throws {
        let path = directory + "/i.sock"
        let sink = try serve(path)
        let tail = try Child(binary, ["tail", path])
        #expect(waitFor { sink.clients.connected.load(ordering: .relaxed) == 1 })
        let input = events(300)
        try sink.write(EventBatch(input))
        let expected = encoded(input)
        // Each line is printed as it arrives, before the stream ends.
        #expect(tail.waitForOutput(bytes: expected.count))
        #expect(tail.stdout == expected)
        kill(tail.process.processIdentifier, SIGINT)
        #expect(tail.finish() == 0)
        #expect(tail.stdout == expected)
        try sink.close()
    }

    @Test func aMissingSocketIsAClearFailure() throws {
        let tail = try Child(binary, ["tail", directory + "/absent.sock"])
        #expect(tail.finish() == 1)
        #expect(tail.stderr.contains("no socket at '\(directory)/absent.sock'"))
        #expect(tail.stdout.isEmpty)
    }

    @Test func aFileThatIsNotASocketIsAClearFailure() throws {
        let path = directory + "/plain.txt"
        try Data("x\n".utf8).write(to: URL(fileURLWithPath: path))
        let tail = try Child(binary, ["tail", path])
        #expect(tail.finish() == 1)
        #expect(tail.stderr.contains("'\(path)' is not a socket"))
    }

    @Test func aStaleSocketIsAClearFailure() throws {
        let path = directory + "/stale.sock"
        // Serve, then let the server vanish without removing its file.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        close(fd)
        try #require(bound == 0)
        let tail = try Child(binary, ["tail", path])
        #expect(tail.finish() == 1)
        #expect(tail.stderr.contains("nothing is serving on '\(path)'"))
    }

    @Test func aRefusedClientIsAClearFailure() throws {
        let path = directory + "/r.sock"
        // Nobody running this test has uid 4242424.
        let sink = try serve(path, allowUIDs: [4_242_424])
        let tail = try Child(binary, ["tail", path])
        #expect(tail.finish() == 1)
        #expect(tail.stderr.contains("closed the connection before sending anything"))
        #expect(tail.stderr.contains("allow_uids"))
        #expect(sink.clients.refused.load(ordering: .relaxed) == 1)
        try sink.close()
    }

    @Test func permissionDeniedIsAClearFailure() throws {
        guard geteuid() == 0 else {
            print("skipped: running tail as uid 65534 needs root")
            return
        }
        let path = directory + "/p.sock"
        // Mode 0600, owned by root: uid 65534 may not connect.
        let sink = try serve(path, allowUIDs: [0, 65534])
        let tail = try Child(binary, ["tail", path], setprivAs: 65534)
        #expect(tail.finish() == 1)
        #expect(tail.stderr.contains("permission denied connecting to '\(path)'"))
        #expect(sink.clients.accepted.load(ordering: .relaxed) == 0)
        try sink.close()
    }

    @Test func noArgumentIsAUsageError() throws {
        let tail = try Child(binary, ["tail"])
        #expect(tail.finish() == 2)
        #expect(tail.stderr.contains("socket"))
    }
}
