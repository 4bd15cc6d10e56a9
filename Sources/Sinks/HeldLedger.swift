#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import PipelineCore
import Synchronization

/// What a sink holds in memory, counted in a file that outlives the process:
/// one small file per sink instance in the sink's `state_directory`, mapped
/// shared and kept current with plain stores (no system call per event), and
/// locked (`flock`) for as long as the instance runs. A process that is
/// killed (`kill -9`, the OOM killer) leaves its counts in the page cache,
/// so the next start finds a file nobody locks and reports what it held as
/// lost; a clean close removes the file (what close could not deliver it
/// counts itself). A crash of the machine loses the counts with the page
/// cache: the file is not synced.
///
/// The counts are events (a `lost` record stands for its count): taken into
/// the sink, released once acknowledged, and dropped but not yet reported in
/// a `lost` record. Updated under the owner's lock.
final class HeldLedger {
    /// The file's layout: eight little-endian words.
    private enum Word: Int {
        case magic, version, pid, taken, released, unreported
    }
    private static let magic: UInt64 = 0x444C_4548_4C50_4950  // "PIPLHELD"
    private static let size = 64

    let path: String
    private let fd: Int32
    private let words: UnsafeMutablePointer<UInt64>

    /// What the instances of a stage that ended without closing left, found at start.
    struct Leftover {
        var events: UInt64 = 0
        var pids: [UInt64] = []
    }

    /// Files of `stage` in `directory` are named `<prefix>.<pid>.<n>.held`.
    private static func prefix(_ stage: String) -> String { "sink-\(stage)." }

    /// Takes in the files of earlier instances of `stage` that nobody holds
    /// (their process is gone) and removes them, then makes this instance's.
    static func open(directory: String, stage: String) throws(SystemError) -> (ledger: HeldLedger, leftover: Leftover) {
        try FileIO.makeDirectories(directory)
        var leftover = Leftover()
        let prefix = prefix(stage)
        for name in try FileIO.listDirectory(directory) where name.hasPrefix(prefix) && name.hasSuffix(".held") {
            let path = directory + "/" + name
            guard let fd = try? FileIO.open(path, O_RDWR) else { continue }
            defer { close(fd) }
            // Held: an instance running now (another pipelined, or this one's before a reload).
            guard flock(fd, LOCK_EX | LOCK_NB) == 0 else { continue }
            var counts = [UInt64](repeating: 0, count: size / 8)
            let read = counts.withUnsafeMutableBytes { pread(fd, $0.baseAddress, size, 0) }
            if read == size, counts[Word.magic.rawValue] == magic, counts[Word.version.rawValue] == 1 {
                let taken = counts[Word.taken.rawValue], released = counts[Word.released.rawValue]
                let held = taken >= released ? taken - released : 0
                let lost = held &+ counts[Word.unreported.rawValue]
                if lost > 0 {
                    leftover.events &+= lost
                    leftover.pids.append(counts[Word.pid.rawValue])
                }
            }
            unlink(path)
        }
        return (try HeldLedger(path: Self.freshPath(directory, prefix)), leftover)
    }

    private static let instances = Mutex(0)

    private static func freshPath(_ directory: String, _ prefix: String) -> String {
        let n = instances.withLock { count in
            count += 1
            return count
        }
        return "\(directory)/\(prefix)\(getpid()).\(n).held"
    }

    private init(path: String) throws(SystemError) {
        self.path = path
        let fd = try FileIO.open(path, O_RDWR | O_CREAT | O_TRUNC, mode: 0o600)
        guard flock(fd, LOCK_EX | LOCK_NB) == 0, ftruncate(fd, off_t(Self.size)) == 0 else {
            let error = SystemError("cannot lock and size", errno, path: path)
            close(fd)
            throw error
        }
        guard let mapped = mmap(nil, Self.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), mapped != MAP_FAILED else {
            let error = SystemError("cannot map", errno, path: path)
            close(fd)
            throw error
        }
        self.fd = fd
        words = mapped.bindMemory(to: UInt64.self, capacity: Self.size / 8)
        words[Word.version.rawValue] = 1
        words[Word.pid.rawValue] = UInt64(getpid())
        // Last: a file with the magic has the rest in place.
        words[Word.magic.rawValue] = Self.magic
    }

    deinit {
        munmap(words, Self.size)
        close(fd)
    }

    /// `weight` events came in.
    @inline(__always) func took(_ weight: UInt64) { words[Word.taken.rawValue] &+= weight }
    /// `weight` events were acknowledged.
    @inline(__always) func released(_ weight: UInt64) { words[Word.released.rawValue] &+= weight }
    /// Events dropped and not yet carried by a `lost` record in the sink.
    @inline(__always) func setUnreported(_ count: UInt64) { words[Word.unreported.rawValue] = count }

    /// A clean end: the file goes (what was left, the closing sink counts).
    func remove() {
        unlink(path)
    }
}
