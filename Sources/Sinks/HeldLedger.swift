#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import PipelineCore
import Synchronization

/// What a sink holds until the stream acknowledges it, kept in a file that
/// outlives the process: one file per sink instance in the sink's
/// `state_directory`, mapped shared and kept current with plain stores (no
/// system call per event), and locked (`flock`) for as long as the
/// instance runs. A process that is killed (`kill -9`, the OOM killer)
/// leaves the file in the page cache; the next start finds a file nobody
/// locks and takes it in. A clean close removes the file (what close could
/// not deliver it counts itself).
///
/// The file is a header page, then, with `buffer: disk`, the outbox's ring
/// itself (``Outbox``):
///
/// - The header counts events (a `lost` record stands for its count): taken
///   into the sink, released once acknowledged, and dropped but not yet
///   reported in a `lost` record. Without a ring, the next start reports
///   what was held as lost.
/// - With a ring, every line in it is a frame (``frameHeader`` bytes: a
///   checksum of the frame, the line's length, its sequence number, then
///   the line, padded to 8 bytes), and the header names the oldest held
///   frame, the next sequence number, the `Nats-Msg-Id` prefix and the
///   kernel's boot id. The next start walks the frames from the oldest and
///   sends them again under their own message ids, so that the stream drops
///   what it had stored already: a killed node loses nothing.
///
/// A crash of the machine keeps what reached the disk: the held part of the
/// ring and then the header page are written through every `buffer_sync`
/// (``sync(ring:)``, from the sink's ``Syncer``). A file of an earlier boot
/// may be torn (pages written back in any order, some never), so its walk
/// keeps the frames from the oldest whose checksums hold, and the rest of
/// what the header says it held is counted as lost.
///
/// Sendable because its words and ring are stored to under the outbox's
/// lock only; the syncer's thread just hands the mapping's pages to msync.
final class HeldLedger: @unchecked Sendable {
    /// The header's words, little-endian, from byte 0.
    private enum Word: Int {
        case magic, version, pid, taken, released, unreported
        /// Bytes of the ring after the header (0: counts only).
        case ringBytes
        /// The oldest held sequence number and its frame's offset in the ring.
        case firstSequence, firstOffset
        /// The sequence number the next line gets.
        case nextSequence
        /// Bytes of the message id prefix at ``prefixOffset``.
        case prefixLength
        /// One more than the stream sequence after which any stored copy
        /// of a held line lies (the oldest held line's floor, see
        /// ``Outbox/Entry/floor``); 0: not known (a file of an older build).
        case floor
    }
    private static let magic: UInt64 = 0x444C_4548_4C50_4950  // "PIPLHELD"
    /// 3: frames start with a checksum; 2: with ``frameMagic`` (read on the
    /// boot that wrote them only).
    private static let version: UInt64 = 3
    /// The header; the ring starts after it.
    static let headerSize = 4096
    /// The kernel's boot id (36 bytes of text) and the message id prefix.
    private static let bootIDOffset = 128
    private static let prefixOffset = 192
    static let maxPrefix = headerSize - prefixOffset
    /// Each line in the ring: checksum (4 bytes), length (4), sequence (8).
    static let frameHeader = 16
    /// Version 2's first frame word.
    private static let frameMagic: UInt32 = 0x524D_5246  // "FRMR"

    let path: String
    private let fd: Int32
    private let mapping: UnsafeMutableRawPointer
    private let mappedBytes: Int
    private var words: UnsafeMutablePointer<UInt64> { mapping.assumingMemoryBound(to: UInt64.self) }
    /// The ring, when the buffer is on disk.
    let ring: UnsafeMutableRawBufferPointer?

    /// A ring's frame length for a line of `length` bytes.
    @inline(__always) static func span(_ length: Int) -> Int { (frameHeader + length + 7) & ~7 }

    /// What the instances of a stage that ended without closing left, found at start.
    struct Leftover {
        /// Events to count as lost: held without a ring to send them from,
        /// and dropped but never reported.
        var events: UInt64 = 0
        var pids: [UInt64] = []
        /// The ring of one of them, to send again.
        var spool: Spool?
        /// Files with no header that can be read (a crash before it reached
        /// the disk, or not this program's): nothing in them to count.
        var unreadable: [String] = []
        /// Files taken in, removed by ``HeldLedger/removeLeftovers(_:)``
        /// once what they held is in this instance's file. Each stays open
        /// and locked until then, so that another instance starting at the
        /// same moment on the same directory does not take it in too.
        var paths: [String] = []
        fileprivate var locked: [Int32] = []
    }

    /// The held lines of a run that was killed, in sequence order, read
    /// from its file (mapped until this is released).
    final class Spool {
        let pid: UInt64
        /// Its `Nats-Msg-Id` prefix (`NODE:BOOT:`), without a terminator.
        let prefix: [CChar]
        /// The sequence number after its newest line.
        let nextSequence: UInt64
        /// The events it held (taken − released), as its header says.
        let held: UInt64
        /// Written on an earlier boot of the kernel (a crash or a reboot):
        /// `lines` are the frames from the oldest that were whole on disk.
        let earlierBoot: Bool
        /// Where each line is, oldest first; the last is `nextSequence − 1`.
        let lines: [UnsafeRawBufferPointer]
        /// The stream sequence after which any copy of its lines that the
        /// stream stored lies, when the file says.
        let floor: UInt64?
        private let mapping: UnsafeMutableRawPointer
        private let mappedBytes: Int

        fileprivate init(pid: UInt64, prefix: [CChar], nextSequence: UInt64, held: UInt64, earlierBoot: Bool,
                         lines: [UnsafeRawBufferPointer], floor: UInt64?, mapping: UnsafeMutableRawPointer, mappedBytes: Int) {
            self.floor = floor
            self.earlierBoot = earlierBoot
            self.pid = pid
            self.prefix = prefix
            self.nextSequence = nextSequence
            self.held = held
            self.lines = lines
            self.mapping = mapping
            self.mappedBytes = mappedBytes
        }

        deinit { munmap(mapping, mappedBytes) }
    }

    /// Files of `stage` in `directory` are named `<prefix>.<pid>.<n>.held`.
    private static func prefix(_ stage: String) -> String { "sink-\(stage)." }

    /// Takes in the files of earlier instances of `stage` that nobody holds
    /// (their process is gone), then makes this instance's, with a ring of
    /// `ringBytes` (0: counts only). The first such file with a ring comes
    /// back as the spool to send again (whatever this instance's buffer):
    /// of this boot walked whole, of an earlier one as far as its frames
    /// are whole. The others are counted. `boot` is the kernel's boot id
    /// (a test gives another).
    static func open(directory: String, stage: String, ringBytes: Int, boot: [UInt8] = bootID()) throws(SystemError) -> (ledger: HeldLedger, leftover: Leftover) {
        try FileIO.makeDirectories(directory)
        var leftover = Leftover()
        let prefix = prefix(stage)
        for name in try FileIO.listDirectory(directory).sorted() where name.hasPrefix(prefix) && name.hasSuffix(".held") {
            let path = directory + "/" + name
            guard let fd = try? FileIO.open(path, O_RDWR) else { continue }
            // Held: an instance running now (another pipelined, or this
            // one's before a reload), or one taking the file in. A lock got
            // on a file that instance has removed since we opened it is on
            // a file nobody will look at again: nothing to take in.
            var status = stat()
            guard flock(fd, LOCK_EX | LOCK_NB) == 0, fstat(fd, &status) == 0, status.st_nlink > 0 else {
                close(fd)
                continue
            }
            leftover.paths.append(path)
            leftover.locked.append(fd)
            var header = [UInt64](repeating: 0, count: 8)
            let read = header.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 64, 0) }
            guard read == 64, header[Word.magic.rawValue] == magic, (1...version).contains(header[Word.version.rawValue]) else {
                leftover.unreadable.append(path)
                continue
            }
            let taken = header[Word.taken.rawValue], released = header[Word.released.rawValue]
            let held = taken >= released ? taken - released : 0
            let pid = header[Word.pid.rawValue]
            if held > 0, leftover.spool == nil, header[Word.version.rawValue] >= 2,
               let spool = walk(fd, held: held, version: header[Word.version.rawValue], boot: boot) {
                leftover.spool = spool
                if header[Word.unreported.rawValue] > 0 {
                    leftover.events &+= header[Word.unreported.rawValue]
                    leftover.pids.append(pid)
                }
                continue
            }
            let lost = held &+ header[Word.unreported.rawValue]
            if lost > 0 {
                leftover.events &+= lost
                leftover.pids.append(pid)
            }
        }
        do {
            return (try HeldLedger(path: Self.freshPath(directory, prefix), ringBytes: ringBytes, boot: boot), leftover)
        } catch {
            releaseLeftovers(leftover)
            throw error
        }
    }

    /// Removes the files taken in at open (their lines are in this
    /// instance's buffer now), then lets go of their locks.
    static func removeLeftovers(_ leftover: Leftover) {
        for path in leftover.paths { unlink(path) }
        releaseLeftovers(leftover)
    }

    /// Lets go of the files taken in at open and leaves them for the next
    /// start: this one failed before their lines were safe elsewhere.
    static func releaseLeftovers(_ leftover: Leftover) {
        for fd in leftover.locked { close(fd) }
    }

    /// The held frames of a file with a ring: written on this boot, if every
    /// frame from the oldest to the newest is whole; on an earlier boot
    /// (version 3), those from the oldest up to the first whose checksum
    /// fails, which may be none.
    private static func walk(_ fd: Int32, held: UInt64, version: UInt64, boot: [UInt8]) -> Spool? {
        var status = stat()
        guard fstat(fd, &status) == 0, Int(status.st_size) > headerSize else { return nil }
        let size = Int(status.st_size)
        guard let mapped = mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0), mapped != MAP_FAILED else { return nil }
        let header = UnsafeRawPointer(mapped)
        func word(_ word: Word) -> UInt64 { header.loadUnaligned(fromByteOffset: word.rawValue * 8, as: UInt64.self) }
        let ringBytes = Int(clamping: word(.ringBytes))
        let prefixLength = Int(clamping: word(.prefixLength))
        let first = word(.firstSequence), next = word(.nextSequence)
        var offset = Int(clamping: word(.firstOffset))
        let written = UnsafeRawBufferPointer(start: header + bootIDOffset, count: boot.count)
        let earlierBoot = boot.isEmpty || !written.elementsEqual(boot)
        guard !earlierBoot || version >= 3, ringBytes > 0, headerSize + ringBytes == size,
              prefixLength > 0, prefixLength <= maxPrefix, next >= first, next - first <= UInt64(ringBytes / frameHeader) else {
            munmap(mapped, size)
            return nil
        }
        let ring = header + headerSize
        /// The frame at `offset`, if one is there whole: its sequence and line.
        func frame(at offset: Int) -> (sequence: UInt64, line: UnsafeRawBufferPointer)? {
            guard offset >= 0, offset + frameHeader <= ringBytes else { return nil }
            let length = Int(ring.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self))
            guard length > 0, length <= ringBytes - frameHeader - offset else { return nil }
            let sequence = ring.loadUnaligned(fromByteOffset: offset + 8, as: UInt64.self)
            let first = ring.loadUnaligned(fromByteOffset: offset, as: UInt32.self)
            guard first == (version >= 3 ? checksum(ring + offset + frameHeader, count: length, sequence: sequence) : frameMagic) else { return nil }
            return (sequence, UnsafeRawBufferPointer(start: ring + offset + frameHeader, count: length))
        }
        /// The frame of `sequence` at `offset`, if it is there whole.
        func frame(at offset: Int, _ sequence: UInt64) -> UnsafeRawBufferPointer? {
            guard let found = frame(at: offset), found.sequence == sequence else { return nil }
            return found.line
        }
        var sequence = first
        // Killed between the two stores of ``front(_:offset:)``: the offset
        // is the newer, and what lies between was acknowledged.
        if frame(at: offset, first) == nil, let newer = frame(at: offset)?.sequence, newer > first, newer < next {
            sequence = newer
        }
        var lines: [UnsafeRawBufferPointer] = []
        lines.reserveCapacity(Int(next - sequence))
        while sequence < next {
            // Each frame follows the one before, or starts the ring again.
            if let line = frame(at: offset, sequence) {
                lines.append(line)
            } else if let line = frame(at: 0, sequence) {
                offset = 0
                lines.append(line)
            } else if earlierBoot {
                // Torn by the crash, or never written back: what follows
                // is counted as lost (the header's count less what is sent).
                break
            } else {
                munmap(mapped, size)
                return nil
            }
            offset += span(lines[lines.count - 1].count)
            sequence += 1
        }
        let prefix = UnsafeRawBufferPointer(start: header + prefixOffset, count: prefixLength).map { CChar(bitPattern: $0) }
        let floor = word(.floor)
        return Spool(pid: word(.pid), prefix: prefix, nextSequence: next, held: held, earlierBoot: earlierBoot,
                     lines: lines, floor: floor > 0 ? floor - 1 : nil, mapping: mapped, mappedBytes: size)
    }

    /// This boot of the kernel: a file of another boot may be torn.
    static func bootID() -> [UInt8] {
        guard let bytes = try? FileIO.readAll("/proc/sys/kernel/random/boot_id", limit: 64) else { return [] }
        let text = bytes.prefix { $0 != UInt8(ascii: "\n") }
        return text.count == 36 ? Array(text) : []
    }

    private static let instances = Mutex(0)

    private static func freshPath(_ directory: String, _ prefix: String) -> String {
        let n = instances.withLock { count in
            count += 1
            return count
        }
        return "\(directory)/\(prefix)\(getpid()).\(n).held"
    }

    private init(path: String, ringBytes: Int, boot: [UInt8]) throws(SystemError) {
        self.path = path
        let fd = try FileIO.open(path, O_RDWR | O_CREAT | O_TRUNC, mode: 0o600)
        let size = Self.headerSize + ringBytes
        /// Gives the file up: `call` failed with `code`.
        func failed(_ call: String, _ code: Int32) -> SystemError {
            close(fd)
            unlink(path)
            return SystemError(call, code, path: path)
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else { throw failed("cannot lock", errno) }
        // The blocks are reserved now: a store to a mapped page the file
        // system has no room for would kill the process (SIGBUS).
        let reserved = posix_fallocate(fd, 0, off_t(size))
        guard reserved == 0 else {
            throw failed(ringBytes > 0 ? "cannot reserve buffer_bytes (\(Units.formatSize(ringBytes))) and a header page" : "cannot reserve a header page", reserved)
        }
        guard let mapped = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), mapped != MAP_FAILED else {
            throw failed("cannot map", errno)
        }
        self.fd = fd
        mapping = mapped
        mappedBytes = size
        ring = ringBytes > 0 ? UnsafeMutableRawBufferPointer(start: mapped + Self.headerSize, count: ringBytes) : nil
        words[Word.version.rawValue] = Self.version
        words[Word.pid.rawValue] = UInt64(getpid())
        words[Word.ringBytes.rawValue] = UInt64(ringBytes)
        if !boot.isEmpty { (mapped + Self.bootIDOffset).copyMemory(from: boot, byteCount: boot.count) }
        // Last: a file with the magic has the rest in place.
        words[Word.magic.rawValue] = Self.magic
    }

    deinit {
        munmap(mapping, mappedBytes)
        close(fd)
    }

    /// The message id prefix and the first sequence number of this instance.
    func start(prefix: [CChar], sequence: UInt64) {
        if prefix.count <= Self.maxPrefix {
            (mapping + Self.prefixOffset).copyMemory(from: prefix, byteCount: prefix.count)
            words[Word.prefixLength.rawValue] = UInt64(prefix.count)
        }
        words[Word.firstSequence.rawValue] = sequence
        words[Word.nextSequence.rawValue] = sequence
    }

    /// `weight` events came in.
    @inline(__always) func took(_ weight: UInt64) { words[Word.taken.rawValue] &+= weight }
    /// `weight` events were acknowledged.
    @inline(__always) func released(_ weight: UInt64) { words[Word.released.rawValue] &+= weight }
    /// Events dropped and not yet carried by a `lost` record in the sink.
    @inline(__always) func setUnreported(_ count: UInt64) { words[Word.unreported.rawValue] = count }

    /// Writes a frame's header at `offset` in the ring, once its line of
    /// `length` bytes is in place after it.
    @inline(__always) func frame(at offset: Int, length: Int, sequence: UInt64) {
        guard let ring else { return }
        let sum = Self.checksum(ring.baseAddress! + offset + Self.frameHeader, count: length, sequence: sequence)
        ring.storeBytes(of: sum, toByteOffset: offset, as: UInt32.self)
        ring.storeBytes(of: UInt32(length), toByteOffset: offset + 4, as: UInt32.self)
        ring.storeBytes(of: sequence, toByteOffset: offset + 8, as: UInt64.self)
    }

    /// A frame's checksum, over its sequence number, length and line: not a
    /// cryptographic one, it tells a frame that reached the disk whole from
    /// one a crash tore (a page of it written back and another not, or an
    /// older lap of the ring). Eight bytes a step, each mixed in by a
    /// multiplication and a shift, both invertible, so that a change in any
    /// one word changes the result.
    static func checksum(_ bytes: UnsafeRawPointer, count: Int, sequence: UInt64) -> UInt32 {
        let odd: UInt64 = 0x9E37_79B9_7F4A_7C15
        var hash = (sequence ^ 0x3344_4C45_484C_5049) &* odd ^ UInt64(count)
        var index = 0
        while index + 8 <= count {
            hash = (hash ^ bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self)) &* odd
            hash ^= hash >> 29
            index += 8
        }
        var tail: UInt64 = 0
        var shift: UInt64 = 0
        while index < count {
            tail |= UInt64(bytes.load(fromByteOffset: index, as: UInt8.self)) << shift
            shift += 8
            index += 1
        }
        hash = (hash ^ tail) &* odd
        hash ^= hash >> 32
        hash = hash &* 0xD6E8_FEB8_6659_FD93
        hash ^= hash >> 32
        return UInt32(truncatingIfNeeded: hash)
    }

    /// Any stored copy of a held line lies after stream sequence `floor`.
    @inline(__always) func floor(_ floor: UInt64) { words[Word.floor.rawValue] = floor &+ 1 }

    /// A line is in the ring, whole: the next one gets `next`.
    @inline(__always) func appended(next: UInt64) { words[Word.nextSequence.rawValue] = next }
    /// The oldest line held is now `sequence`, its frame at `offset`.
    @inline(__always) func front(_ sequence: UInt64, offset: Int) {
        words[Word.firstOffset.rawValue] = UInt64(offset)
        words[Word.firstSequence.rawValue] = sequence
    }

    /// Writes through to the disk the ring bytes in `ring` (offsets, the
    /// held part: one range, or two when it wraps), then the header page,
    /// so that the header names no frame older than the ring on disk holds.
    /// Returns the bytes asked for, or the error of a failed `msync`.
    func sync(ring ranges: [Range<Int>]) -> Result<Int, SystemError> {
        let page = Self.pageSize
        var bytes = 0
        for range in ranges where !range.isEmpty {
            let start = (Self.headerSize + range.lowerBound) / page * page
            let end = min(mappedBytes, Self.headerSize + range.upperBound)
            guard msync(mapping + start, end - start, MS_SYNC) == 0 else { return .failure(SystemError("cannot sync", errno, path: path)) }
            bytes += end - start
        }
        guard msync(mapping, Self.headerSize, MS_SYNC) == 0 else { return .failure(SystemError("cannot sync", errno, path: path)) }
        return .success(bytes + Self.headerSize)
    }

    private static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// A clean end: the file goes (what was left, the closing sink counts).
    func remove() {
        unlink(path)
    }
}

extension HeldLedger {
    /// Writes the held part of a `buffer: disk` ring through to the disk
    /// every `intervalNs`, on a thread of its own: an `msync` takes the
    /// disk's time, which neither the sink's thread nor the publisher's
    /// waits for. What a crash of the machine can lose is then what came in
    /// within one interval.
    final class Syncer: @unchecked Sendable {
        private let wake = ConditionLock()
        private var stopped = false  // guarded by `wake`
        private var thread: RuntimeThread?

        /// `held` gives the ring ranges held now; `synced` hears of each sync.
        init(ledger: HeldLedger, intervalNs: Int64, name: String,
             held: @escaping @Sendable () -> [Range<Int>], synced: @escaping @Sendable (Result<Int, SystemError>) -> Void) {
            thread = RuntimeThread(name: name) { [self] in
                while true {
                    let stop = wake.withLock {
                        let deadline = Clock.monotonicNs() + intervalNs
                        while !stopped, Clock.monotonicNs() < deadline { _ = wake.wait(untilMonotonicNs: deadline) }
                        return stopped
                    }
                    if stop { return }
                    synced(ledger.sync(ring: held()))
                }
            }
        }

        /// Ends the thread once a sync under way is done.
        func stop() {
            wake.withLock { stopped = true }
            wake.broadcast()
            thread?.join()
            thread = nil
        }
    }
}
