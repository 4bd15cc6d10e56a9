#if canImport(Glibc)
import Glibc
#endif
import Atomics
import CBPF

/// The reading side of a BPF ring buffer (`BPF_MAP_TYPE_RINGBUF`), after the
/// kernel's protocol in kernel/bpf/ringbuf.c, in place of libbpf's
/// `ring_buffer` for two reasons:
///
/// - **Memory.** libbpf maps the data area twice, back to back, so that a
///   record wrapping past the end reads as one piece; every page then counts
///   twice in the daemon's resident size (a 4 MiB ring showed as 8 MiB).
///   Mapped once, a wrapped record (rare: records are a few hundred bytes)
///   is copied into a scratch buffer instead.
/// - **Wake-ups.** The map's poll is level-triggered: libbpf's `epoll_wait`
///   returns at once whenever any record waits, so under load the reader
///   loops on small handfuls. Registered edge-triggered, the reader sleeps
///   until the kernel program wakes it (a sixteenth of the ring waits) or
///   the timeout passes.
///
/// Layout: page 0 (read-write) holds the consumer position; the read-only
/// mapping starts with the producer position page, then the data area.
/// Each record is an 8-byte header (`u32 len` with the busy and discard
/// bits, `u32 pg_off`) and `len` bytes, the whole rounded up to 8.
final class RingConsumer {
    private static let busyBit: UInt32 = 1 << 31
    private static let discardBit: UInt32 = 1 << 30
    private static let headerBytes = 8
    /// The largest record copied when it wraps: the kernel program's records
    /// stay under 32 KiB (its scratch buffer). A larger one is handed on
    /// empty, which the decoder counts as malformed.
    static let maxWrappedRecord = 64 * 1024

    /// Bytes of the data area (a power of two).
    let size: Int
    private let mask: UInt64
    private let pageSize: Int
    private let consumerPage: UnsafeMutableRawPointer
    private let producerMapping: UnsafeMutableRawPointer
    private let data: UnsafeRawPointer
    private let epollFD: Int32
    private let scratch: UnsafeMutableRawPointer

    /// Records read in two pieces across the end of the ring, in this
    /// process so far (the tests check that the path is taken).
    static let wrappedRecords = ManagedAtomic<Int>(0)

    /// Maps the ring of map `fd` and registers it for edge-triggered wake-ups.
    init(fd: Int32) throws {
        var info = bpf_map_info()
        var infoLength = UInt32(MemoryLayout<bpf_map_info>.size)
        guard bpf_obj_get_info_by_fd(fd, &info, &infoLength) == 0 else {
            throw BPFError("cannot read the ring buffer map's size", code: errno)
        }
        let size = Int(info.max_entries)
        guard size > 0, size & (size - 1) == 0 else { throw BPFError("the ring buffer's size \(size) is not a power of two") }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))

        guard let consumer = mmap(nil, page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), consumer != MAP_FAILED else {
            throw BPFError("cannot map the ring buffer's consumer page", code: errno)
        }
        guard let producer = mmap(nil, page + size, PROT_READ, MAP_SHARED, fd, off_t(page)), producer != MAP_FAILED else {
            let code = errno
            munmap(consumer, page)
            throw BPFError("cannot map the ring buffer (\(size) bytes)", code: code)
        }
        let epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        var event = epoll_event()
        event.events = EPOLLIN.rawValue | EPOLLET.rawValue
        guard epoll >= 0, epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) == 0 else {
            let code = errno
            if epoll >= 0 { close(epoll) }
            munmap(producer, page + size)
            munmap(consumer, page)
            throw BPFError("cannot watch the ring buffer (epoll)", code: code)
        }
        self.size = size
        mask = UInt64(size - 1)
        pageSize = page
        consumerPage = consumer
        producerMapping = producer
        data = UnsafeRawPointer(producer + page)
        epollFD = epoll
        scratch = UnsafeMutableRawPointer.allocate(byteCount: Self.maxWrappedRecord, alignment: 8)
    }

    deinit {
        close(epollFD)
        munmap(producerMapping, pageSize + size)
        munmap(consumerPage, pageSize)
        scratch.deallocate()
    }

    /// Sleeps until the kernel program wakes the reader or `timeoutMs`
    /// passes. Returns the `epoll_wait` error (`-errno`), or 0.
    func wait(timeoutMs: Int32) -> Int32 {
        var event = epoll_event()
        let result = epoll_wait(epollFD, &event, 1, timeoutMs)
        return result < 0 ? -errno : 0
    }

    /// Bytes written by the program and not yet read (relaxed; any thread,
    /// while the consumer exists).
    var usedBytes: Int {
        Int(truncatingIfNeeded: producerPosition.load(ordering: .relaxed) &- consumerPosition.load(ordering: .relaxed))
    }

    private var consumerPosition: UnsafeAtomic<UInt64> {
        UnsafeAtomic(at: consumerPage.assumingMemoryBound(to: UInt64.AtomicRepresentation.self))
    }

    private var producerPosition: UnsafeAtomic<UInt64> {
        UnsafeAtomic(at: producerMapping.assumingMemoryBound(to: UInt64.AtomicRepresentation.self))
    }

    /// How many records are read between two stores of the consumer
    /// position. Every producer reads that position when it reserves room:
    /// stored per record (as libbpf does), it moved the cache line to the
    /// reader's CPU and back for every record, and reserving cost three
    /// times as much. Held back this way, at most this many records' room
    /// (a few KiB) returns to the kernel a little later.
    static let releaseEvery = 64

    /// Hands every committed record to `body` in order, until the ring is
    /// empty or the next record is still being written; their room goes
    /// back to the kernel every ``releaseEvery`` records and before this
    /// returns.
    func consume(_ body: (UnsafeRawBufferPointer) -> Void) {
        var position = consumerPosition.load(ordering: .acquiring)
        var unreleased = 0
        defer { if unreleased > 0 { consumerPosition.store(position, ordering: .releasing) } }
        while true {
            let end = producerPosition.load(ordering: .acquiring)
            if position >= end { return }
            while position < end {
                let offset = Int(position & mask)
                let header = UnsafeAtomic<UInt32>(at: UnsafeMutableRawPointer(mutating: data + offset)
                    .assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
                let word = header.load(ordering: .acquiring)
                // Reserved but not submitted yet: the rest waits for next time.
                if word & Self.busyBit != 0 { return }
                let length = Int(word & ~(Self.busyBit | Self.discardBit))
                if word & Self.discardBit == 0 {
                    let start = (offset + Self.headerBytes) & Int(mask)
                    if start + length <= size {
                        body(UnsafeRawBufferPointer(start: data + start, count: length))
                    } else if length <= min(Self.maxWrappedRecord, size) {
                        // The record wraps past the end of the single mapping.
                        let first = size - start
                        scratch.copyMemory(from: data + start, byteCount: first)
                        (scratch + first).copyMemory(from: data, byteCount: length - first)
                        Self.wrappedRecords.wrappingIncrement(ordering: .relaxed)
                        body(UnsafeRawBufferPointer(start: scratch, count: length))
                    } else {
                        body(UnsafeRawBufferPointer(start: nil, count: 0))
                    }
                }
                position += UInt64((length + Self.headerBytes + 7) & ~7)
                unreleased += 1
                if unreleased == Self.releaseEvery {
                    consumerPosition.store(position, ordering: .releasing)
                    unreleased = 0
                }
            }
        }
    }
}
