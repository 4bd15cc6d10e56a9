import Foundation
import PipelineCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Real faults for the sink tests (docs/fault-injection.md): a small tmpfs
/// that fills up, and a FUSE file system that answers EIO on demand. Both
/// need root (mount); CI runs as root and requires them.
enum Faults {
    /// CI sets it (with the kernel tests' variables): a fault test that cannot run is a failure there.
    static let required = ProcessInfo.processInfo.environment["PIPELINED_REQUIRE_BPF"] == "1"

    /// Whether this process can mount a tmpfs (root, or CAP_SYS_ADMIN); said once when not.
    static let canMount: Bool = {
        let probe = "/tmp/pipelined-mount-probe-\(getpid())"
        mkdir(probe, 0o755)
        defer { rmdir(probe) }
        guard mount("tmpfs", probe, "tmpfs", 0, "size=64k") == 0 else {
            print("◇ fault injection tests skipped: cannot mount a tmpfs here (\(String(cString: strerror(errno)))); run as root")
            return false
        }
        umount2(probe, Int32(MNT_DETACH))
        return true
    }()

    /// Whether the FUSE fault file system can be built and mounted here.
    static let canUseFUSE: Bool = {
        guard canMount else { return false }
        guard access("/dev/fuse", R_OK | W_OK) == 0 else {
            print("◇ EIO fault tests skipped: no /dev/fuse")
            return false
        }
        guard FaultFS.binary != nil else {
            print("◇ EIO fault tests skipped: cannot build faultfs.c (install libfuse3-dev: scripts/install-packages.sh)")
            return false
        }
        return true
    }()

    /// Lines of a file, with `lost` records apart.
    static func lines(_ path: String) -> [String] {
        guard let data = FileManager.default.contents(atPath: path) else { return [] }
        return String(decoding: data, as: UTF8.self).split(separator: "\n").map(String.init)
    }

    /// Open file descriptors of a process.
    static func openFDs(_ pid: Int32 = getpid()) -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).count
    }
}

/// A tmpfs of a given size, mounted on a fresh directory under /tmp and
/// unmounted (lazily) when released.
final class TmpfsMount {
    let path: String

    init(bytes: Int) throws {
        path = "/tmp/pipelined-tmpfs-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        guard mount("tmpfs", path, "tmpfs", 0, "size=\(bytes)") == 0 else {
            throw SystemError("cannot mount a tmpfs", errno, path: path)
        }
    }

    /// Bytes free now.
    var freeBytes: Int {
        var info = statvfs()
        statvfs(path, &info)
        return Int(info.f_bavail) * Int(info.f_frsize)
    }

    /// Writes a file of `bytes` zero bytes (taking that much space).
    func fill(_ name: String, bytes: Int) throws {
        try Data(count: bytes).write(to: URL(fileURLWithPath: path + "/" + name))
    }

    deinit {
        umount2(path, Int32(MNT_DETACH))
        rmdir(path)
    }
}

/// Tests/SinkTests/Fixtures/faultfs.c mounted over a backing directory:
/// a file system that passes everything through until ``failing`` is set,
/// then answers EIO to every write (what a dying disk does).
///
/// `@unchecked Sendable`: ``failing`` only creates or removes the control
/// file (the file system reads it); the process is touched in init and deinit only.
final class FaultFS: @unchecked Sendable {
    /// The compiled faultfs, built once per version of its source (as
    /// TestSupport's driver is); nil when it cannot be built.
    static let binary: String? = {
        let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/faultfs.c").path
        guard let text = FileManager.default.contents(atPath: source) else { return nil }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        let directory = "/tmp/pipelined-test-faultfs/" + String(hash, radix: 16)
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let binary = directory + "/faultfs"
        if FileManager.default.isExecutableFile(atPath: binary) { return binary }
        let partial = directory + "/partial-\(getpid())"
        let compiler = Process()
        compiler.executableURL = URL(fileURLWithPath: "/bin/sh")
        compiler.arguments = ["-c", "cc -O1 -Wall -o '\(partial)' '\(source)' $(pkg-config --cflags --libs fuse3)"]
        guard (try? compiler.run()) != nil else { return nil }
        compiler.waitUntilExit()
        guard compiler.terminationStatus == 0, rename(partial, binary) == 0 else { return nil }
        return binary
    }()

    let root: String
    /// Where the file system is mounted: the path the sink writes under.
    let mountPoint: String
    private let backing: String
    private let control: String
    private let process = Process()

    init() throws {
        root = "/tmp/pipelined-faultfs-\(UUID().uuidString.prefix(8))"
        backing = root + "/backing"
        mountPoint = root + "/mnt"
        control = root + "/fail"
        for directory in [backing, mountPoint] {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        guard let binary = Self.binary else { throw SystemError("cannot build faultfs", ENOENT) }
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = [backing, control, mountPoint]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        // Mounted once the mount point's file system is FUSE's.
        let deadline = Clock.monotonicNs() + 20_000_000_000
        while !isMounted {
            guard process.isRunning, Clock.monotonicNs() < deadline else { throw SystemError("faultfs did not mount", EIO, path: mountPoint) }
            Clock.sleep(ns: 10_000_000)
        }
    }

    private var isMounted: Bool {
        let mounts = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
        return mounts.split(separator: "\n").contains { $0.hasPrefix("faultfs \(mountPoint) fuse") }
    }

    /// While true, every write, create, fsync, truncate, rename and unlink fails with EIO.
    var failing: Bool {
        get { access(control, F_OK) == 0 }
        set {
            if newValue { FileManager.default.createFile(atPath: control, contents: nil) } else { unlink(control) }
        }
    }

    /// The file as the backing directory holds it (what reached the "disk").
    func backingPath(_ name: String) -> String { backing + "/" + name }

    /// Unmounts and stops the file system; safe to call more than once
    /// (deinit calls it too, but a test whose closures hold this may
    /// outlive its scope, so a test calls it itself).
    func unmount() {
        guard process.isRunning || FileManager.default.fileExists(atPath: root) else { return }
        umount2(mountPoint, Int32(MNT_DETACH))
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: root)
    }

    deinit { unmount() }
}
