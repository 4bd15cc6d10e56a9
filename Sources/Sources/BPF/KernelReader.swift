#if canImport(Glibc)
import Glibc
#endif
import CBPF
import PipelineCore

/// Reads records from the kernel program's buffer and turns them into
/// batches: the ring buffer (``RingConsumer``) or libbpf's perf buffer,
/// polled on the source's own thread, each sample decoded by ``WireDecoder``
/// straight from the mapped buffer (no copy unless a sample wrapped around
/// the end of its buffer).
///
/// Wake-ups are the cost that matters at high rates: a perf buffer that wakes
/// its reader on every sample spends most of the traced program's time in
/// wake-ups. So the perf buffer is opened raw with a watermark (the reader
/// wakes when a CPU's buffer is a quarter full) and the ring buffer is written
/// without wake-ups until a sixteenth of it waits (the kernel program looks
/// every 32 records per CPU); in both cases the poll times out every flush
/// interval and the reader then drains whatever is below the threshold, so a
/// quiet system still sees its events within that interval.
final class KernelReader {
    enum Transport {
        case perf(perfArrayFD: Int32, pagesPerCPU: Int)
        /// `dropCounter` returns the kernel program's per-CPU count of records
        /// the ring buffer had no room for (index = CPU).
        case ringbuf(ringbufFD: Int32, dropCounter: (() -> [UInt64])?)
    }

    private let state: ReaderState
    private var perf: OpaquePointer?
    private var ring: RingConsumer?
    private let dropCounter: (() -> [UInt64])?
    private var reportedDrops: [UInt64] = []
    private var lastDropCheckNs: Int64 = 0
    /// How often the ring buffer's drop counts are read while polling.
    private let dropCheckIntervalNs: Int64

    /// Opens the buffers; records are read only once ``start(output:batchEvents:)``
    /// named where they go, so that a failure to map a buffer surfaces while
    /// the source is being prepared.
    init(transport: Transport, decoder: WireDecoder, metrics: StageMetrics, dropCheckIntervalNs: Int64 = 100_000_000) throws {
        state = ReaderState(decoder: decoder, metrics: metrics)
        self.dropCheckIntervalNs = dropCheckIntervalNs
        let context = Unmanaged.passUnretained(state).toOpaque()
        switch transport {
        case .perf(let fd, let pages):
            dropCounter = nil
            var attributes = perf_event_attr()
            attributes.type = UInt32(PERF_TYPE_SOFTWARE.rawValue)
            attributes.size = UInt32(MemoryLayout<perf_event_attr>.size)
            attributes.config = UInt64(PERF_COUNT_SW_BPF_OUTPUT.rawValue)
            attributes.sample_type = UInt64(PERF_SAMPLE_RAW.rawValue)
            attributes.watermark = 1
            attributes.wakeup_watermark = UInt32(pages * Int(sysconf(Int32(_SC_PAGESIZE))) / 4)
            var options = perf_buffer_raw_opts()
            options.sz = MemoryLayout<perf_buffer_raw_opts>.size
            guard let buffer = perf_buffer__new_raw(fd, pages, &attributes, { context, cpu, header in
                ReaderState.with(context) { $0.perfEvent(cpu: cpu, header: header) }
            }, context, &options), libbpf_get_error(UnsafeRawPointer(buffer)) == 0 else {
                throw BPFError("cannot open the perf buffer (\(pages) pages per CPU)", code: errno, log: LibbpfLog.take())
            }
            perf = buffer
        case .ringbuf(let fd, let drops):
            dropCounter = drops
            ring = try RingConsumer(fd: fd)
        }
    }

    deinit {
        if let perf { perf_buffer__free(perf) }
    }

    /// The ring buffer's bytes waiting to be read and its size; nil for the
    /// perf buffer (per CPU, its fill is not read here).
    var bufferUse: (used: Int, size: Int)? {
        ring.map { ($0.usedBytes, $0.size) }
    }

    /// Sets where batches go; call before the first poll.
    func start(output: SourceOutput, batchEvents: Int) {
        state.output = output
        state.batchEvents = max(1, batchEvents)
        state.batch.reserveCapacity(state.batchEvents)
    }

    /// Waits up to `timeoutMs` for a wake-up, drains every buffer, and pushes
    /// what was read downstream. Throws on a fatal poll error.
    func pollOnce(timeoutMs: Int32) throws {
        if let perf {
            let result = perf_buffer__poll(perf, timeoutMs)
            if result < 0, result != -EINTR { throw BPFError("perf buffer poll failed", code: result) }
            // Below the watermark nothing wakes us: take what is there.
            _ = perf_buffer__consume(perf)
        } else if let ring {
            let result = ring.wait(timeoutMs: timeoutMs)
            if result < 0, result != -EINTR { throw BPFError("ring buffer poll failed", code: result) }
            ring.consume { state.sample(cpu: nil, $0) }
            // The drop counts cost a syscall to read: once per interval, not
            // once per wake-up (a storm wakes the reader hundreds of times a
            // second).
            let now = Clock.monotonicNs()
            if now - lastDropCheckNs >= dropCheckIntervalNs {
                lastDropCheckNs = now
                reportRingbufDrops()
            }
        }
        state.flush()
    }

    /// Turns growth of the program's per-CPU drop counts into lost records.
    private func reportRingbufDrops() {
        guard let dropCounter, let output = state.output else { return }
        let totals = dropCounter()
        if reportedDrops.count < totals.count {
            reportedDrops += repeatElement(0, count: totals.count - reportedDrops.count)
        }
        for (cpu, total) in totals.enumerated() where total > reportedDrops[cpu] {
            state.flush()
            output.emitLost(count: total - reportedDrops[cpu], site: .kernel, cpu: Int32(cpu))
            reportedDrops[cpu] = total
        }
    }

    /// Reads everything left in the buffers (at shutdown, after detaching).
    func drain() {
        if let perf { _ = perf_buffer__consume(perf) }
        if let ring {
            ring.consume { state.sample(cpu: nil, $0) }
            reportRingbufDrops()
        }
        state.flush()
    }
}

/// The callbacks' state: the batch being filled. Touched only by the thread
/// that polls (libbpf calls the callbacks from inside poll/consume).
private final class ReaderState {
    let decoder: WireDecoder
    let metrics: StageMetrics
    var output: SourceOutput?
    @exclusivity(unchecked) var batchEvents = 512
    // Touched by the polling thread alone (the callbacks run inside its
    // poll): the dynamic exclusivity check Swift makes on every access to
    // a class's stored property costs ~70 instructions a record here, and
    // can never fail, so it is not made.
    @exclusivity(unchecked) var batch: [PipelineRecord] = []
    /// Bytes read since the last flush.
    @exclusivity(unchecked) var pendingBytes: UInt64 = 0

    init(decoder: WireDecoder, metrics: StageMetrics) {
        self.decoder = decoder
        self.metrics = metrics
    }

    /// Calls `body` with the state behind a callback's context pointer. The
    /// reader owns the state for as long as libbpf can call back, so the
    /// reference is borrowed: no retain and release per sample.
    @inline(__always)
    static func with<R>(_ context: UnsafeMutableRawPointer?, _ body: (ReaderState) -> R) -> R {
        Unmanaged<ReaderState>.fromOpaque(context!)._withUnsafeGuaranteedRef(body)
    }

    /// One raw perf record: a sample, or a count of samples the kernel lost.
    func perfEvent(cpu: Int32, header: UnsafeMutablePointer<perf_event_header>?) -> bpf_perf_event_ret {
        guard let header else { return LIBBPF_PERF_EVENT_CONT }
        let base = UnsafeRawPointer(header)
        let size = Int(header.pointee.size)
        switch header.pointee.type {
        case UInt32(PERF_RECORD_SAMPLE.rawValue):
            // struct { perf_event_header; u32 size; char data[size]; }
            guard size >= 12 else { countMalformed(); break }
            let rawSize = Int(base.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
            guard rawSize <= size - 12 else { countMalformed(); break }
            sample(cpu: cpu, UnsafeRawBufferPointer(start: base + 12, count: rawSize))
        case UInt32(PERF_RECORD_LOST.rawValue):
            // struct { perf_event_header; u64 id; u64 lost; }
            guard size >= 24 else { break }
            let lost = base.loadUnaligned(fromByteOffset: 16, as: UInt64.self)
            flush()
            output?.emitLost(count: lost, site: .kernel, cpu: cpu)
        default:
            break
        }
        return LIBBPF_PERF_EVENT_CONT
    }

    func sample(cpu: Int32?, _ bytes: UnsafeRawBufferPointer) {
        // Counted at the flush: an atomic add per record cost a retain and
        // a release of the counter besides (9 % of the storm's consumer).
        pendingBytes &+= UInt64(bytes.count)
        do {
            batch.append(.event(try decoder.decode(bytes)))
            if batch.count >= batchEvents { flush() }
        } catch {
            countMalformed()
        }
    }

    private func countMalformed() {
        metrics.add(metrics.malformed, 1)
    }

    func flush() {
        metrics.add(metrics.bytes, pendingBytes)
        pendingBytes = 0
        guard !batch.isEmpty, let output else { return }
        output.emit(EventBatch(batch))
        batch.removeAll(keepingCapacity: true)
    }
}
