#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Atomics
import CNATS
import Logging
import NATSClient
import PipelineCore
import Synchronization

/// The `nats` sink: every record becomes one JetStream message, its payload
/// the record's NDJSON line (without the `\n`), published asynchronously.
///
/// ```
///  sink thread               publisher thread                 C client's threads
///  write(batch) ─encode─▶ ┌────────────────────────┐  publish  ┌──────────────┐
///                         │ Outbox: held lines in a │─────────▶│ nats-server  │
///   drop + count when ◀── │ ring of buffer_bytes,   │  ◀─acks── │ (JetStream)  │
///   the ring is full      │ by sequence number      │ ack handler└──────────────┘
///                         └────────────────────────┘
/// ```
///
/// - At least once into the stream, exactly once in it: each message carries
///   `Nats-Msg-Id: NODE:BOOT:SEQ` (the sink's node, a random id drawn when the
///   sink opens, the record's sequence number in this run). A publish whose
///   ack does not come back within `ack_timeout` (or that the server
///   refuses) is sent again with the same id, so the stream's duplicate
///   window drops the copy if the first one was stored after all.
/// - Past that window a resend may be stored twice. The sink learns the
///   stream's window when it checks or creates the stream; a publish first
///   sent more than half of it ago is looked for in the stream before it
///   is sent again (``PublishLink/lookInStream(_:waitNs:)``), and released
///   if it is there. For a resend that went out without a look (the server
///   refused one) and was answered past the window, the sink counts the
///   copies that may be extra (`resent_past_duplicate_window`, logged at
///   the end): a bound on what the stream holds beyond the events sent.
/// - A line is held until its ack arrives. While the server is unreachable
///   the sink holds up to `buffer_bytes`, then drops new records and counts
///   them; once there is room again it publishes a `lost` record
///   (`"where":"sink"`, `"stage":"<id>"`) with the count, so the stream
///   accounts for every event.
/// - The pipeline never waits for the broker: ``write(_:)`` only encodes and
///   copies into the outbox. At most `max_pending` publishes are in flight.
/// - ``close()`` waits up to `close_timeout` for the acks of everything held,
///   then counts what is left as lost (logged; the stream cannot be told).
/// - The stream is created when missing (subjects `<first token>.>`, file
///   storage, `max_age`, `max_bytes`, `duplicate_window`, `replicas`) and
///   checked when present: subjects that do not take the sink's subjects are
///   a pipeline error located at `stream` (exit 78 at start).
public final class NATSSink: EventSink {
    public static let descriptor = StageDescriptor.sink(
        type: "nats", summary: "publish every record to a NATS JetStream stream (at least once, duplicates removed by message id)",
        options: NATSSinkOptions.self, make: NATSSink.init)

    public let options: NATSSinkOptions
    // Touched only from the sink's own thread (the EventSink contract).
    private nonisolated(unsafe) var state = State()

    private struct State {
        var context: StageContext?
        var outbox: Outbox?
        var link: PublishLink?
        /// Writes a `buffer: disk` ring through to the disk.
        var syncer: HeldLedger.Syncer?
        /// NDJSON of the batch being written.
        var scratch: [UInt8] = []
        /// Line ends within `scratch`.
        var lineEnds: [Int] = []
        /// Subject index in the outbox, by (node, event id).
        var subjects: [UInt64: Int32] = [:]
        /// The subject of the sink's own `lost` records.
        var lostSubject: Int32 = 0
    }

    private let encoder = NDJSONEncoder()

    public init(_ options: NATSSinkOptions) {
        self.options = options
    }

    public func open(_ context: StageContext) throws {
        state.context = context
        state.scratch.reserveCapacity(1 << 20)
        var ledger: HeldLedger?
        var leftover = HeldLedger.Leftover()
        if let directory = options.stateDirectory {
            do {
                (ledger, leftover) = try HeldLedger.open(directory: directory, stage: context.id, ringBytes: options.bufferOnDisk ? options.bufferBytes : 0)
            } catch {
                throw StageStartError(stage: context.id, message: "sink '\(context.id)': state_directory: \(error)", location: options.stateDirectoryLocation)
            }
        }
        // What a killed run held on disk is sent again under its own message
        // ids, and this run goes on from its next sequence number, so the
        // stream drops whatever of it was stored already.
        let spool = leftover.spool
        let prefix = spool?.prefix ?? PublishLink.freshPrefix(node: context.node)
        var resending: [(line: UnsafeRawBufferPointer, record: PipelineRecord)] = []
        var resendingEvents: UInt64 = 0
        var firstSequence = spool?.nextSequence ?? 0
        if let spool {
            let decoder = NDJSONDecoder(defaultNode: context.node)
            // The newest that fit this run's buffer, in order.
            var room = options.bufferBytes
            for line in spool.lines.reversed() {
                room -= HeldLedger.span(line.count)
                guard room >= 0, let record = try? decoder.decode(line) else { break }
                resending.append((line, record))
            }
            resending.reverse()
            firstSequence -= UInt64(resending.count)
            resendingEvents = resending.reduce(0) { $0 + $1.record.lossWeight }
            if spool.held > resendingEvents {
                leftover.events &+= spool.held - resendingEvents
                if !leftover.pids.contains(spool.pid) { leftover.pids.append(spool.pid) }
            }
        }
        ledger?.start(prefix: prefix, sequence: firstSequence)
        let outbox = Outbox(capacity: options.bufferBytes, maxPending: options.maxPending, duplicateWindowNs: options.duplicateWindowNs,
                            ledger: ledger, firstSequence: firstSequence)
        if !resending.isEmpty {
            let subjects = resending.map { subject(for: $0.record, outbox: outbox) }
            withExtendedLifetime(spool) {
                outbox.lock.withLock {
                    for (index, (line, record)) in resending.enumerated() {
                        let appended = outbox.append(line, subject: subjects[index], weight: record.lossWeight)
                        precondition(appended, "the lines kept fit the buffer")
                    }
                    // The killed run may have had them stored, longer ago
                    // than the duplicate window: look before sending.
                    if let floor = spool?.floor {
                        outbox.lookBeforeSending(firstSequence..<firstSequence + UInt64(resending.count), floor: floor)
                    }
                }
            }
        }
        let link = PublishLink(options: options, outbox: outbox, context: context, idPrefix: prefix)
        do {
            try link.start()
        } catch {
            // The earlier runs' files stay for the next start.
            ledger?.remove()
            HeldLedger.releaseLeftovers(leftover)
            throw error
        }
        // Their lines are in this run's outbox now.
        HeldLedger.removeLeftovers(leftover)
        if let ledger, ledger.ring != nil, options.bufferSyncNs > 0 {
            state.syncer = Self.startSyncing(ledger, outbox: outbox, everyNs: options.bufferSyncNs, context: context)
        }
        for path in leftover.unreadable {
            context.logger.warning("state_directory: \(path) has no header this program can read (written by another program, or the machine crashed before its header reached the disk): removed, nothing in it to send or count")
        }
        state.lostSubject = subject(for: .lost(LostRecord(timeNs: 0, count: 0, site: .sink, node: context.node, stage: context.id)), outbox: outbox)
        state.outbox = outbox
        state.link = link
        if let spool, !resending.isEmpty {
            let when = spool.earlierBoot ? " on an earlier boot of this machine (the part of its buffer file that reached the disk whole)" : ""
            context.logger.notice("an earlier run (pid \(spool.pid))\(when) ended without closing while it held \(resendingEvents) event(s) the stream had not acknowledged: sending them again from state_directory with their message ids")
        }
        if leftover.events > 0 {
            // Counted here and carried by this run's first lost record.
            context.metrics.addLost(leftover.events, at: .sink)
            outbox.lock.withLock { outbox.dropped(leftover.events) }
            let pids = leftover.pids.map(String.init).joined(separator: ", ")
            let why = options.bufferOnDisk ? " (not read back whole from its buffer file, or beyond this run's buffer_bytes)" : ""
            context.logger.error("an earlier run (pid \(pids)) ended without closing while it held \(leftover.events) event(s) the stream had not acknowledged\(why): counted as lost, a lost record with the count goes to the stream")
        }
    }

    /// Syncs the held part of `ledger`'s ring every `everyNs`, counted in
    /// `buffer_syncs` and `buffer_synced_bytes`; a failing sync is logged
    /// when it starts failing and when it works again.
    private static func startSyncing(_ ledger: HeldLedger, outbox: Outbox, everyNs: Int64, context: StageContext) -> HeldLedger.Syncer {
        let metrics = context.metrics, logger = context.logger
        let syncs = metrics.counter("buffer_syncs", help: "times the held part of the buffer: disk file was written through to the disk (buffer_sync)")
        let bytes = metrics.counter("buffer_synced_bytes", help: "bytes of the buffer: disk file asked to be written through to the disk (held lines' pages and the header page)")
        let failing = Mutex(false)
        /// Notes whether the last sync failed; returns whether the one before did.
        @Sendable func noteFailing(_ now: Bool) -> Bool {
            failing.withLock { state in
                let before = state
                state = now
                return before
            }
        }
        return HeldLedger.Syncer(ledger: ledger, intervalNs: everyNs, name: "nats-sync:\(context.id)",
                                 held: { outbox.lock.withLock { outbox.heldRing() } }) { result in
            switch result {
            case .success(let count):
                syncs.add()
                bytes.add(UInt64(count))
                if noteFailing(false) {
                    logger.notice("state_directory: the buffer file is written through to the disk again")
                }
            case .failure(let error):
                if !noteFailing(true) {
                    logger.error("state_directory: \(error): what the buffer holds is in the page cache only until a sync works again (a crash of the machine would lose it)")
                }
            }
        }
    }

    public func write(_ batch: EventBatch) throws {
        guard let outbox = state.outbox, let link = state.link, let context = state.context else { return }
        try link.throwIfFailed()
        state.scratch.removeAll(keepingCapacity: true)
        encoder.encode(batch, into: &state.scratch)
        state.lineEnds.removeAll(keepingCapacity: true)
        state.scratch.withUnsafeBufferPointer { bytes in
            for index in bytes.indices where bytes[index] == UInt8(ascii: "\n") { state.lineEnds.append(index) }
        }
        precondition(state.lineEnds.count == batch.count, "one NDJSON line per record")
        var subjectIndices: [Int32] = []
        subjectIndices.reserveCapacity(batch.count)
        for index in batch.records.indices {
            subjectIndices.append(subject(for: batch.records[index], outbox: outbox))
        }
        let dropped = state.scratch.withUnsafeBytes { bytes in
            outbox.lock.withLock { () -> UInt64 in
                appendPendingLost(outbox, context: context)
                var start = 0
                var dropped: UInt64 = 0
                for (index, end) in state.lineEnds.enumerated() {
                    let line = UnsafeRawBufferPointer(rebasing: bytes[start..<end])
                    start = end + 1
                    let weight = batch.records[index].lossWeight
                    if !outbox.append(line, subject: subjectIndices[index], weight: weight) {
                        dropped += weight
                    }
                }
                if dropped > 0 { outbox.dropped(dropped) }
                outbox.lock.broadcast()
                return dropped
            }
        }
        if dropped > 0 {
            context.metrics.addLost(dropped, at: .sink)
            link.reportDropping()
        }
    }

    /// Puts the `lost` record for what was dropped so far in front, if it
    /// fits now. Called with the outbox locked.
    private func appendPendingLost(_ outbox: Outbox, context: StageContext) {
        let count = outbox.droppedUnreported
        guard count > 0 else { return }
        let record = PipelineRecord.lost(LostRecord(timeNs: Clock.wallNs(), count: count, site: .sink, node: context.node, stage: context.id))
        var line: [UInt8] = []
        encoder.encode(record, into: &line)
        line.removeLast()
        // The count rides in the stream on this record, not on top of it.
        let appended = line.withUnsafeBytes { outbox.append($0, subject: state.lostSubject, weight: count) }
        if appended {
            outbox.reportedDropped()
            state.link?.reportDropEnded(count)
        }
    }

    /// The outbox's index of the record's subject, made once per (node, kind).
    private func subject(for record: PipelineRecord, outbox: Outbox) -> Int32 {
        let node: NodeID
        let eventID: UInt32
        switch record {
        case .event(let event):
            node = event.node
            eventID = event.eventID
        case .lost(let lost):
            node = lost.node
            eventID = UInt32.max
        }
        let key = UInt64(node.rawValue) << 32 | UInt64(eventID)
        if let index = state.subjects[key] { return index }
        let scope: String
        let event: String
        if eventID == UInt32.max {
            (scope, event) = ("lost", "lost")
        } else if let kind = EventCatalog.kind(id: eventID) {
            (scope, event) = (kind.scope.name, kind.name)
        } else {
            (scope, event) = ("unknown", "unknown")
        }
        let index = outbox.addSubject(options.subject.render(node: node.name, scope: scope, event: event))
        state.subjects[key] = index
        return index
    }

    public func idle(nowNs: Int64) throws {
        guard let link = state.link, let outbox = state.outbox, let context = state.context else { return }
        try link.throwIfFailed()
        outbox.lock.withLock {
            appendPendingLost(outbox, context: context)
            outbox.lock.broadcast()
        }
    }

    public func close() throws {
        guard let link = state.link, let outbox = state.outbox, let context = state.context else { return }
        let deadline = Clock.monotonicNs() + options.closeTimeoutNs
        // The count of what was dropped goes into the stream too, if it can.
        outbox.lock.withLock {
            while outbox.droppedUnreported > 0, !link.hasFailedLocked {
                appendPendingLost(outbox, context: context)
                if outbox.droppedUnreported == 0 || !outbox.lock.wait(untilMonotonicNs: deadline) && Clock.monotonicNs() >= deadline { break }
            }
        }
        let left = link.finish(deadlineNs: deadline)
        state.link = nil
        state.syncer?.stop()
        state.syncer = nil
        // A clean end: what is left is counted below, not by the next start.
        outbox.ledger?.remove()
        if left.events > 0 {
            context.metrics.addLost(left.weight, at: .sink)
            context.logger.error("\(left.events) record(s) (\(left.weight) event(s)) not acknowledged by stream '\(options.stream)' within close_timeout \(Units.formatDuration(options.closeTimeoutNs)): counted as lost")
        }
        if left.unreported > 0 {
            context.logger.error("the count of \(left.unreported) dropped event(s) could not be put in the stream (counted in this stage's lost)")
        }
        try link.throwIfFailed()
    }
}

// MARK: - Outbox

/// The lines a sink holds until the stream acknowledges them, in sequence
/// order: their bytes in one ring of `capacity` bytes, their state in a
/// ring of entries. Everything is guarded by ``lock``, which the sink's
/// thread (appending), the publisher thread (taking work) and the C client's
/// ack thread (acknowledging) take in turn.
///
/// With `buffer: disk` the ring is the one in the sink's ``HeldLedger``
/// file, each line framed (sequence number, length) so that the next start
/// can read back what a killed run held.
final class Outbox: @unchecked Sendable {
    // All mutable state is guarded by `lock` (see the type's comment); the
    // bytes of an entry never move while it is held, so the publisher reads
    // them without the lock once it has taken the entry.
    let lock = ConditionLock()
    let capacity: Int
    let maxPending: Int
    private let storage: UnsafeMutableRawBufferPointer
    /// The ring is memory of its own (else the ledger's file).
    private let ownsStorage: Bool
    /// Bytes in front of each line in the ring: ``HeldLedger/frameHeader``
    /// when the ring is in the ledger's file, else none.
    private let frameHeader: Int

    enum EntryState: UInt8 {
        /// Never sent.
        case unsent
        /// Sent; no ack yet.
        case inflight
        /// To be sent again (an ack timed out or the server refused).
        case retry
        /// Acknowledged; released once every older entry is too.
        case acked
        /// To be looked for in the stream before it is sent again: its first
        /// publish is more than half the duplicate window old, so a copy
        /// stored back then may be past the window when a resend arrives.
        case checking
    }

    struct Entry {
        var offset: Int
        var length: Int32
        var subject: Int32
        var state: EntryState
        /// Events it stands for: 1, or the count a `lost` record carries.
        var weight: UInt64
        /// Times it was handed out to be published (0: never).
        var sends: UInt32 = 0
        /// When it was first handed out (monotonic ns).
        var firstSentNs: Int64 = 0
        /// The highest stream sequence known when it was first handed out:
        /// any copy of it the stream stored comes after this.
        var floor: UInt64 = 0
    }

    /// An entry to look for in the stream (``takeChecks()``).
    struct Check {
        var sequence: UInt64
        var floor: UInt64
        var subject: UnsafePointer<CChar>
    }

    /// What the publisher sends next.
    struct Work {
        var sequence: UInt64
        var bytes: UnsafeRawPointer
        var length: Int32
        var subject: UnsafePointer<CChar>
    }

    private var entries: [Entry] = []
    private var head = 0
    private(set) var count = 0
    /// The sequence number of the oldest entry.
    private(set) var firstSequence: UInt64 = 0
    /// The oldest sequence never sent.
    private var nextUnsent: UInt64 = 0
    private var retries: [UInt64] = []
    private var retryHead = 0
    /// Entries in the `checking` state waiting for a look, oldest first.
    private var checks: [UInt64] = []
    /// Entries in the `checking` state, waiting or being looked for. While
    /// there are any, nothing new is handed out: what the look finds
    /// missing goes first, in order.
    private var checking = 0
    /// No check is handed out before this (monotonic ns): the last one got no answer.
    var checksPausedUntilNs: Int64 = 0
    /// The highest stream sequence the stream has named: its last when the
    /// sink checked or created it, then the highest an ack carried.
    var streamSequence: UInt64 = 0
    /// Resends are sent without a look in the stream first (the server
    /// refused the look: a user allowed to publish and no more).
    var checksRefused = false
    private(set) var inflight = 0
    /// Subjects as C strings, by index; never freed before the outbox.
    private var subjects: [UnsafeMutablePointer<CChar>] = []
    /// Events dropped (the ring was full) and not yet reported by a `lost` record.
    private(set) var droppedUnreported: UInt64 = 0
    /// Set by ``close()``-time teardown: late acks are ignored.
    var closed = false
    /// No work is handed out before this (monotonic ns): the server refused
    /// a publish (a stream without a leader answers at once), so resending
    /// at once would only spin.
    var pausedUntilNs: Int64 = 0
    /// How long the stream drops a message id it has stored: its
    /// `duplicate_window` as the server reports it once the stream is
    /// checked or created (until then, the option's).
    var duplicateWindowNs: Int64
    /// Keeps what is held outside the process (`state_directory`): counts,
    /// and with `buffer: disk` the ring itself.
    let ledger: HeldLedger?

    /// An outbox whose first line gets `firstSequence`; its ring is the
    /// ledger's when the ledger has one.
    init(capacity: Int, maxPending: Int, duplicateWindowNs: Int64, ledger: HeldLedger? = nil, firstSequence: UInt64 = 0) {
        self.maxPending = maxPending
        self.duplicateWindowNs = duplicateWindowNs
        self.ledger = ledger
        self.firstSequence = firstSequence
        nextUnsent = firstSequence
        if let ring = ledger?.ring {
            storage = ring
            ownsStorage = false
            frameHeader = HeldLedger.frameHeader
        } else {
            // Reserved, not touched: pages are only backed once lines are written.
            storage = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 16)
            ownsStorage = true
            frameHeader = 0
        }
        self.capacity = storage.count
        entries = [Entry](repeating: Entry(offset: 0, length: 0, subject: 0, state: .acked, weight: 0), count: 1024)
    }

    deinit {
        if ownsStorage { storage.deallocate() }
        subjects.forEach { free($0) }
    }

    /// The ring bytes a line of `length` takes.
    @inline(__always) private func span(_ length: Int) -> Int {
        frameHeader == 0 ? length : HeldLedger.span(length)
    }

    var nextSequence: UInt64 { firstSequence + UInt64(count) }
    var isEmpty: Bool { count == 0 }

    private func slot(_ sequence: UInt64) -> Int {
        (head + Int(sequence - firstSequence)) & (entries.count - 1)
    }

    /// Adds a subject; returns its index.
    func addSubject(_ subject: String) -> Int32 {
        lock.withLock {
            subjects.append(strdup(subject))
            return Int32(subjects.count - 1)
        }
    }

    /// Where the held lines lie in the ring: the oldest one's offset, and
    /// the end of the newest one's frame. Call with ``lock`` held, `count` > 0.
    private func heldBounds() -> (oldest: Int, newest: Int, end: Int) {
        let newest = entries[(head + count - 1) & (entries.count - 1)]
        return (entries[head].offset, newest.offset, newest.offset + span(Int(newest.length)))
    }

    /// Where `length` bytes (a line and its frame) fit in the ring, if they do.
    private func place(_ length: Int) -> Int? {
        guard count > 0 else { return length <= capacity ? 0 : nil }
        let (oldest, newest, end) = heldBounds()
        if newest >= oldest {
            if capacity - end >= length { return end }
            return oldest >= length ? 0 : nil
        }
        return oldest - end >= length ? end : nil
    }

    /// The ring bytes of the held lines, frames included: one range, or two
    /// when they wrap. Call with ``lock`` held.
    func heldRing() -> [Range<Int>] {
        guard count > 0 else { return [] }
        let (oldest, _, end) = heldBounds()
        return end > oldest ? [oldest..<end] : [oldest..<capacity, 0..<end]
    }

    /// Copies a line in as the next sequence number; false when it does not
    /// fit (the caller counts it as dropped). Call with ``lock`` held.
    func append(_ line: UnsafeRawBufferPointer, subject: Int32, weight: UInt64) -> Bool {
        guard line.count > 0, let offset = place(span(line.count)) else { return false }
        if count == entries.count { grow() }
        storage.baseAddress!.advanced(by: offset + frameHeader).copyMemory(from: line.baseAddress!, byteCount: line.count)
        entries[(head + count) & (entries.count - 1)] = Entry(offset: offset, length: Int32(line.count), subject: subject, state: .unsent, weight: weight)
        count += 1
        if let ledger {
            if frameHeader > 0 {
                ledger.frame(at: offset, length: line.count, sequence: nextSequence - 1)
                ledger.appended(next: nextSequence)
            }
            // Counted right after its frame is announced, not before the
            // checksum is worked out: a run killed in between would leave a
            // line counted as held that the next start cannot walk.
            ledger.took(weight)
        }
        return true
    }

    private func grow() {
        var larger = [Entry](repeating: Entry(offset: 0, length: 0, subject: 0, state: .acked, weight: 0), count: entries.count * 2)
        for index in 0..<count { larger[index] = entries[(head + index) & (entries.count - 1)] }
        entries = larger
        head = 0
    }

    /// Counts events dropped for want of room. Call with ``lock`` held.
    func dropped(_ weight: UInt64) {
        droppedUnreported += weight
        ledger?.setUnreported(droppedUnreported)
    }

    /// The dropped count is now on its way in a `lost` record. Call with ``lock`` held.
    func reportedDropped() {
        droppedUnreported = 0
        ledger?.setUnreported(0)
    }

    /// Takes up to `limit` entries to publish, retries first, as far as
    /// `max_pending` allows; marks them in flight. Call with ``lock`` held.
    func takeWork(limit: Int, into work: inout [Work]) {
        work.removeAll(keepingCapacity: true)
        let now = Clock.monotonicNs()
        while work.count < limit, inflight < maxPending {
            let sequence: UInt64
            if retryHead < retries.count {
                sequence = retries[retryHead]
                retryHead += 1
                if retryHead == retries.count {
                    retries.removeAll(keepingCapacity: true)
                    retryHead = 0
                }
                guard sequence >= firstSequence, sequence < nextSequence, entries[slot(sequence)].state == .retry else { continue }
                // Sent long enough ago that a stored copy may outlive the
                // window before this one arrives: look for it first.
                let index = slot(sequence)
                if !checksRefused, entries[index].sends > 0, now - entries[index].firstSentNs > duplicateWindowNs / 2 {
                    entries[index].state = .checking
                    checking += 1
                    checks.append(sequence)
                    continue
                }
            } else if checking == 0, nextUnsent < nextSequence {
                sequence = max(nextUnsent, firstSequence)
                nextUnsent = sequence + 1
                guard entries[slot(sequence)].state == .unsent else { continue }
            } else {
                break
            }
            let index = slot(sequence)
            let lookedFor = entries[index].state == .retry && entries[index].sends == 0
            entries[index].state = .inflight
            if entries[index].sends == 0 {
                entries[index].firstSentNs = now
                // One the look found nowhere keeps its floor, so that floors
                // never fall along the ring and the oldest held line's is
                // the least (what a killed run's file keeps, HeldLedger).
                if !lookedFor { entries[index].floor = streamSequence }
                if index == head { ledger?.floor(entries[index].floor) }
            }
            entries[index].sends &+= 1
            inflight += 1
            let entry = entries[index]
            work.append(Work(sequence: sequence, bytes: UnsafeRawPointer(storage.baseAddress!.advanced(by: entry.offset + frameHeader)),
                             length: entry.length, subject: UnsafePointer(subjects[Int(entry.subject)])))
        }
    }

    /// True when ``takeWork(limit:into:)`` would find something.
    var hasWork: Bool {
        inflight < maxPending && (retryHead < retries.count || checking == 0 && nextUnsent < nextSequence) && Clock.monotonicNs() >= pausedUntilNs
    }

    /// The stream named `stored` (an ack, the stream's last at a check):
    /// nothing sent from now on is stored at or below it. Call with ``lock`` held.
    func noteStreamSequence(_ stored: UInt64) {
        guard stored > streamSequence else { return }
        streamSequence = stored
        // Nothing held was sent: what is sent next lies past this.
        if count == 0 || entries[head].state == .unsent { ledger?.floor(stored) }
    }

    /// The lines `sequences` (a killed run's, sent again by this one) may
    /// be in the stream after `floor` already: they are looked for there
    /// before they are sent. Call with ``lock`` held.
    func lookBeforeSending(_ sequences: Range<UInt64>, floor: UInt64) {
        for sequence in sequences where sequence >= firstSequence && sequence < nextSequence {
            let index = slot(sequence)
            guard entries[index].state == .unsent else { continue }
            entries[index].state = .checking
            checking += 1
            entries[index].floor = floor
            checks.append(sequence)
        }
        if count > 0, entries[head].state == .checking { ledger?.floor(entries[head].floor) }
    }

    /// True when ``takeChecks()`` would find something.
    var checksDue: Bool { !checks.isEmpty && Clock.monotonicNs() >= checksPausedUntilNs }

    /// The entries to look for in the stream before sending them again,
    /// taken off the list (``checked(found:of:)`` or ``checkFailed(_:retryAfterNs:)``
    /// says how it went). Call with ``lock`` held.
    func takeChecks() -> [Check] {
        guard checksDue else { return [] }
        var taken: [Check] = []
        for sequence in checks where sequence >= firstSequence && sequence < nextSequence {
            let entry = entries[slot(sequence)]
            guard entry.state == .checking else { continue }
            taken.append(Check(sequence: sequence, floor: entry.floor, subject: UnsafePointer(subjects[Int(entry.subject)])))
        }
        checks.removeAll(keepingCapacity: true)
        return taken
    }

    /// The look in the stream answered: the entries `found` there are
    /// released as acknowledged; the rest of `checks` are sent again as if
    /// for the first time (no copy of them is stored, so the window starts
    /// anew). Returns what was released and how many were found. Call with
    /// ``lock`` held.
    func checked(found: Set<UInt64>, of checks: [Check]) -> (records: Int, bytes: Int, found: Int) {
        var foundCount = 0
        for check in checks where check.sequence >= firstSequence && check.sequence < nextSequence {
            let index = slot(check.sequence)
            // An ack that came meanwhile settled it.
            guard entries[index].state == .checking else { continue }
            checking -= 1
            if found.contains(check.sequence) {
                entries[index].state = .acked
                foundCount += 1
            } else {
                entries[index].state = .retry
                entries[index].sends = 0
                retries.append(check.sequence)
            }
        }
        let released = releaseFront()
        return (released.records, released.bytes, foundCount)
    }

    /// The look got no answer: the entries wait for the next, after
    /// `retryAfterNs`. Call with ``lock`` held.
    func checkFailed(_ failed: [Check], retryAfterNs: Int64) {
        checks.insert(contentsOf: failed.map(\.sequence), at: 0)
        checksPausedUntilNs = Clock.monotonicNs() + retryAfterNs
    }

    /// The server refuses the look: what waits for one is sent again
    /// without it, and later resends too. Call with ``lock`` held.
    func sendWithoutChecks() {
        checksRefused = true
        for sequence in checks where sequence >= firstSequence && sequence < nextSequence {
            let index = slot(sequence)
            guard entries[index].state == .checking else { continue }
            entries[index].state = .retry
            checking -= 1
            retries.append(sequence)
        }
        checks.removeAll()
    }

    /// An ack for `sequence`: releases every acknowledged entry at the
    /// front. Returns what was released (records, bytes) and the resends of
    /// `sequence` that may be second copies in the stream (see
    /// ``resendsPastWindow(_:nowNs:)``). Call with ``lock`` held.
    func acknowledge(_ sequence: UInt64, streamSequence stored: UInt64 = 0) -> (records: Int, bytes: Int, pastWindow: UInt64) {
        noteStreamSequence(stored)
        guard !closed, sequence >= firstSequence, sequence < nextSequence else { return (0, 0, 0) }
        let index = slot(sequence)
        let state = entries[index].state
        guard state == .inflight || state == .retry || state == .checking else { return (0, 0, 0) }
        if state == .inflight { inflight -= 1 }
        entries[index].state = .acked
        if state == .checking { checking -= 1 }
        // The clock is read only for a message sent more than once.
        let pastWindow = entries[index].sends > 1 ? resendsPastWindow(entries[index], nowNs: Clock.monotonicNs()) : 0
        let released = releaseFront()
        return (released.records, released.bytes, pastWindow)
    }

    /// Releases every acknowledged entry at the front. Call with ``lock`` held.
    private func releaseFront() -> (records: Int, bytes: Int) {
        guard !closed else { return (0, 0) }
        var released = (records: 0, bytes: 0)
        var weight: UInt64 = 0
        while count > 0, entries[head].state == .acked {
            released.records += 1
            released.bytes += Int(entries[head].length)
            weight += entries[head].weight
            head = (head + 1) & (entries.count - 1)
            count -= 1
            firstSequence += 1
        }
        if released.records > 0, let ledger {
            ledger.released(weight)
            // The oldest held line's floor, or (none sent) the stream's last known.
            ledger.floor(count > 0 && entries[head].state != .unsent ? entries[head].floor : streamSequence)
            if frameHeader > 0 { ledger.front(firstSequence, offset: count > 0 ? entries[head].offset : 0) }
        }
        if nextUnsent < firstSequence { nextUnsent = firstSequence }
        return released
    }

    /// How many copies of an entry may be stored beside the first, its ack
    /// (or the end) coming at `nowNs`. Every copy reaches the server after
    /// the first publish and, one connection's publishes being processed
    /// in order, before the ack of the last one sent. The stream stores a
    /// copy again only when it comes more than `duplicateWindowNs` after
    /// the copy it stored last, so stored copies are more than a window
    /// apart within that span: for a message answered within the window of
    /// its first publish, none is extra; else at most one per window
    /// elapsed, and never more than its resends. Which ones were actually
    /// stored the client cannot tell (a server stopped with a resend in its
    /// socket processes it late, and the ack a client waits for is only
    /// the last copy's), hence a bound.
    func resendsPastWindow(_ entry: Entry, nowNs: Int64) -> UInt64 {
        let elapsed = nowNs - entry.firstSentNs
        guard entry.sends > 1, elapsed > duplicateWindowNs else { return 0 }
        let resends = UInt64(entry.sends - 1)
        guard duplicateWindowNs > 0 else { return resends }
        return min(resends, UInt64((elapsed - 1) / duplicateWindowNs))
    }

    /// The resends of what is still held that may be second copies (at close:
    /// no ack will say more). Call with ``lock`` held.
    func heldResendsPastWindow(nowNs: Int64) -> UInt64 {
        var total: UInt64 = 0
        for offset in 0..<count {
            let entry = entries[(head + offset) & (entries.count - 1)]
            // One waiting for a look was sent only within half a window of its first publish.
            if entry.state != .acked, entry.state != .checking { total += resendsPastWindow(entry, nowNs: nowNs) }
        }
        return total
    }

    /// `sequence` is to be sent again (no ack in time, a refusal, a failed
    /// send, or reclaimed after a reconnect); `notSent`: the client did not
    /// take it, so it does not count as sent. Call with ``lock`` held.
    func retry(_ sequence: UInt64, notSent: Bool = false) {
        guard !closed, sequence >= firstSequence, sequence < nextSequence else { return }
        let index = slot(sequence)
        guard entries[index].state == .inflight else { return }
        entries[index].state = .retry
        if notSent, entries[index].sends > 0 { entries[index].sends -= 1 }
        inflight -= 1
        retries.append(sequence)
    }

    /// Every publish in flight is to be sent again (its connection is gone);
    /// returns how many. Call with ``lock`` held.
    func retryInFlight() -> Int {
        var taken = 0
        for offset in 0..<count where entries[(head + offset) & (entries.count - 1)].state == .inflight {
            retry(firstSequence + UInt64(offset))
            taken += 1
        }
        return taken
    }

    /// What is still held: records, and the events they stand for. Call with ``lock`` held.
    var held: (records: Int, weight: UInt64) {
        var weight: UInt64 = 0
        for offset in 0..<count { weight += entries[(head + offset) & (entries.count - 1)].weight }
        return (count, weight)
    }
}

// MARK: - Publishing

/// The sink's connection, JetStream context and publisher thread, and the
/// handlers the C client calls: everything that talks to the server.
final class PublishLink: @unchecked Sendable {
    // `connection`, `target` and `thread` are set in `start()` and cleared
    // in `finish()`, both on the sink's thread; in between only the
    // publisher thread replaces `connection` and `target` (when the client
    // gives up on a connection); the client's callbacks never touch them.
    // `jetStream` is also read by the callback thread (after a
    // reconnect), so it is set and destroyed under `handles`. `failure`,
    // `streamReady` and the log flags are guarded by the outbox's lock. That
    // is why this is @unchecked Sendable.
    let options: NATSSinkOptions
    let outbox: Outbox
    let context: StageContext
    private var connection: NATSConnection?
    /// What the current connection's callbacks and ack handler reach the link through.
    private var target: AckTarget?
    private var jetStream: OpaquePointer?
    private var thread: RuntimeThread?
    private var failure: StageStartError?
    private var streamReady = false
    private var closing = false
    private var closeDeadlineNs: Int64 = .max
    private let connected = ManagedAtomic<Bool>(false)
    /// Set before the connection is closed on purpose.
    private let tornDown = ManagedAtomic<Bool>(false)
    /// Set when the client gave up on the connection: the publisher thread
    /// makes a new one (``renew(waitNs:)``).
    private let gaveUp = ManagedAtomic<Bool>(false)
    /// Held to use `jetStream` from the client's callback thread, and to destroy it.
    private let handles = ConditionLock()
    /// Set once a publish went out: before that the context has no table of
    /// pending publishes, and asking it for one crashes the C client (3.4.1).
    private let published = ManagedAtomic<Bool>(false)
    /// The `Nats-Msg-Id` prefix: `NODE:BOOT:`.
    private let idPrefix: [CChar]
    private var droppingReported = false
    private var lastRefusal = ""
    /// Messages the ack handler is done with, freed by the publisher thread
    /// between its publishes. The C client (3.4.1) registers a message for
    /// its ack before it has finished sending it: when the server stops
    /// answering, the ack timeout can hand the message to the handler while
    /// `js_PublishMsgAsync` is still encoding its headers, and freeing it in
    /// the handler crashed the process (found by the SIGSTOP fault test).
    /// Guarded by the outbox's lock.
    private var finishedMessages: [OpaquePointer] = []
    /// The publisher thread has returned: the handler frees messages itself.
    /// Guarded by the outbox's lock.
    private var publisherDone = false
    /// Publishes sent again (no ack in time, a refusal, a reconnect): the
    /// stage's `resent` series.
    private let resent: StageMetrics.Counter
    /// Copies that may be stored twice: resends of messages answered only
    /// after the stream's duplicate window, bounded as
    /// ``Outbox/resendsPastWindow(_:nowNs:)`` says (the stage's
    /// `resent_past_duplicate_window` series).
    private let resentPastWindow: StageMetrics.Counter
    /// Set once the first such resend was logged. Guarded by the outbox's lock.
    private var pastWindowReported = false
    /// Publishes the stream answered as duplicates of a message it held
    /// (a resend after a reconnect, or from a killed run's file): the
    /// stage's `duplicates` series.
    let duplicates: StageMetrics.Counter
    /// Resends held back because a look in the stream found the message
    /// stored already (``lookInStream(_:waitNs:)``): the stage's
    /// `found_in_stream` series.
    private let foundInStream: StageMetrics.Counter

    init(options: NATSSinkOptions, outbox: Outbox, context: StageContext, idPrefix: [CChar]) {
        self.options = options
        self.outbox = outbox
        self.context = context
        self.idPrefix = idPrefix
        resent = context.metrics.counter("resent", help: "publishes sent again with the same message id (no ack in time, refused, or after a reconnect)")
        duplicates = context.metrics.counter("duplicates", help: "publishes the stream answered as duplicates of a message id it held (a resend after a reconnect, or from a killed run's file): not stored again")
        foundInStream = context.metrics.counter("found_in_stream", help: "publishes not acknowledged within half the stream's duplicate window that a look in the stream found stored already: released, not sent again")
        resentPastWindow = context.metrics.counter("resent_past_duplicate_window", help: "resends that may be stored as second copies: of messages answered more than the stream's duplicate window after their first publish, at most one per window elapsed")
    }

    /// A `Nats-Msg-Id` prefix of a run of its own: `NODE:BOOT:`, BOOT drawn at random.
    static func freshPrefix(node: NodeID) -> [CChar] {
        var random = SystemRandomNumberGenerator()
        let boot = String(random.next() as UInt64, radix: 16)
        return Array("\(node.name):\(boot):".utf8CString.dropLast())
    }

    /// The stage's location in the file for errors about `stream`.
    private func located(_ message: String) -> StageStartError {
        StageStartError(stage: context.id, message: "sink '\(context.id)': \(message)", exitCode: 78, location: options.streamLocation)
    }

    /// Connects; if a server answers, checks or creates the stream now (a
    /// stream that cannot take the subjects fails the start, exit 78).
    /// Otherwise says so and lets the publisher thread keep trying.
    func start() throws {
        let isConnected: Bool
        do {
            isConnected = try openConnection()
        } catch let error as NATSError {
            throw options.endpoint.startError(error, stage: context.id, label: "sink '\(context.id)'")
        }
        if isConnected {
            context.logger.info("connected to \(connection?.connectedURL ?? options.endpoint.urlList)")
            do {
                try ensureStream()
                streamReady = true
            } catch StreamProblem.fatal(let message) {
                teardown()
                throw located(message)
            } catch StreamProblem.transient(let message) {
                context.logger.warning("stream '\(options.stream)' not ready yet (\(message)); retrying")
            }
        } else {
            context.logger.error("cannot reach \(options.endpoint.urlList) (\(connection?.lastError ?? "")): retrying every \(Units.formatDuration(NATSConnection.reconnectWaitMs * 1_000_000)); holding up to \(Units.formatSize(options.bufferBytes)) of events meanwhile")
        }
        thread = RuntimeThread(name: "nats:\(context.id)") { [self] in publishLoop() }
    }

    /// Makes the connection and its JetStream context, reached by the
    /// client through a target of their own; true when a server answered.
    private func openConnection() throws -> Bool {
        let target = AckTarget(self)
        let (connection, isConnected) = try NATSConnection.connect(options.endpoint, name: "pipelined \(context.node.name) \(context.id)") { [weak target] event in
            guard let target, !target.retired.load(ordering: .acquiring) else { return }
            target.link?.connectionEvent(event)
        }
        // The ack handler's context lives as long as the process: the C
        // client may call it until its reply subscription is gone, which
        // nothing reports. It holds the link weakly.
        let closure = Unmanaged.passRetained(target).toOpaque()
        let jsContext: OpaquePointer
        do {
            jsContext = try connection.jetStream { options in
                options.PublishAsync.AckHandler = { _, message, ack, refusal, closure in
                    let target = Unmanaged<AckTarget>.fromOpaque(closure!).takeUnretainedValue()
                    if !target.retired.load(ordering: .acquiring), let link = target.link {
                        link.acknowledged(message, ok: ack != nil, duplicate: ack?.pointee.Duplicate == true,
                                          streamSequence: ack?.pointee.Sequence ?? 0, refusal: refusal)
                    } else {
                        natsMsg_Destroy(message)
                    }
                }
                options.PublishAsync.AckHandlerClosure = closure
                // No stall inside the client: the outbox keeps max_pending.
                options.PublishAsync.MaxPending = 0
            }
        } catch {
            target.retired.store(true, ordering: .releasing)
            connection.close()
            throw error
        }
        self.connection = connection
        self.target = target
        handles.withLock { jetStream = jsContext }
        connected.store(isConnected, ordering: .releasing)
        return isConnected
    }

    /// The client gave up on the connection (credentials refused twice in a
    /// row): on the publisher thread, retire it and make a new one. What the
    /// old one had in flight is sent again on the new one, with the same
    /// message ids. A new connection that is refused at once is tried again
    /// after `waitNs` (``NATSConnection/renewalWaitNs(after:)``).
    private func renew(waitNs: inout Int64) {
        target?.retired.store(true, ordering: .releasing)
        handles.withLock {
            if let jetStream { jsCtx_Destroy(jetStream) }
            jetStream = nil
        }
        // A new context has no table of pending publishes until it publishes.
        published.store(false, ordering: .releasing)
        connection?.close()
        connection = nil
        target = nil
        connected.store(false, ordering: .releasing)
        let again = outbox.lock.withLock { outbox.retryInFlight() }
        if again > 0 { resent.add(UInt64(again)) }
        do {
            let isConnected = try openConnection()
            gaveUp.store(false, ordering: .releasing)
            waitNs = 0
            let resending = again > 0 ? "; sending \(again) unacknowledged publish(es) again" : ""
            if isConnected {
                context.logger.notice("made a new connection to \(connection?.connectedURL ?? options.endpoint.urlList)\(resending)")
            } else {
                context.logger.warning("made a new connection; no server answers yet (\(connection?.lastError ?? "")), retrying every \(Units.formatDuration(NATSConnection.reconnectWaitMs * 1_000_000))\(resending)")
            }
            outbox.lock.withLock { outbox.lock.broadcast() }
        } catch {
            waitNs = NATSConnection.renewalWaitNs(after: waitNs)
            context.logger.warning("a new connection to \(options.endpoint.urlList) was refused (\(error)); trying again in \(Units.formatDuration(waitNs)), holding up to \(Units.formatSize(options.bufferBytes)) of events meanwhile")
        }
    }

    // MARK: Stream

    enum StreamProblem: Error {
        /// Retrying cannot help: the stream's configuration is wrong.
        case fatal(String)
        /// The server or cluster cannot answer yet.
        case transient(String)
    }

    /// Creates the stream, or checks that the one there takes our subjects.
    private func ensureStream() throws {
        guard let jetStream else { return }
        for _ in 0..<3 {
            var info: UnsafeMutablePointer<jsStreamInfo>?
            var code = jsErrCode(rawValue: 0)
            let status = js_GetStreamInfo(&info, jetStream, options.stream, nil, &code)
            if status == NATS_OK, let info {
                defer { jsStreamInfo_Destroy(info) }
                try check(info.pointee.Config.pointee)
                noteLastSequence(info.pointee.State.LastSeq)
                return
            }
            guard status == NATS_NOT_FOUND || code == JSStreamNotFoundErr else {
                throw StreamProblem.transient(NATSError(status, code: code, "cannot look up stream '\(options.stream)'").message)
            }
            let created = try create()
            if created { return }
            // Another node created it meanwhile: check that one.
        }
    }

    /// Adds the stream; false when one of that name appeared meanwhile.
    private func create() throws -> Bool {
        guard let jetStream else { return false }
        var config = jsStreamConfig()
        jsStreamConfig_Init(&config)
        let name = strdup(options.stream)
        let subject = strdup(options.subject.streamSubjects)
        defer {
            free(name)
            free(subject)
        }
        var subjects: [UnsafePointer<CChar>?] = [UnsafePointer(subject)]
        var info: UnsafeMutablePointer<jsStreamInfo>?
        var code = jsErrCode(rawValue: 0)
        let status = subjects.withUnsafeMutableBufferPointer { list in
            config.Name = UnsafePointer(name)
            config.Subjects = list.baseAddress
            config.SubjectsLen = 1
            config.Storage = js_FileStorage
            config.Replicas = Int64(options.replicas)
            config.Duplicates = options.duplicateWindowNs
            config.MaxAge = options.maxAgeNs ?? 0
            config.MaxBytes = options.maxBytes.map(Int64.init) ?? -1
            return js_AddStream(&info, jetStream, &config, nil, &code)
        }
        if status == NATS_OK {
            if let info {
                let window = info.pointee.Config.pointee.Duplicates
                outbox.lock.withLock { outbox.duplicateWindowNs = window }
                noteLastSequence(info.pointee.State.LastSeq)
            }
            jsStreamInfo_Destroy(info)
            context.logger.info("created stream '\(options.stream)' (subjects \(options.subject.streamSubjects), replicas \(options.replicas), duplicate window \(Units.formatDuration(options.duplicateWindowNs)))")
            return true
        }
        if code == JSStreamNameExistErr { return false }
        let error = NATSError(status, code: code, "cannot create stream '\(options.stream)'")
        // 10065: the subjects overlap another stream's; 10074: too many replicas for the cluster.
        if code.rawValue == 10065 || code.rawValue == 10074 || code.rawValue == 10052 { throw StreamProblem.fatal(error.message) }
        throw StreamProblem.transient(error.message)
    }

    /// Nothing this sink sends from now on is stored at or below the
    /// stream's last sequence: where a look for a copy starts.
    private func noteLastSequence(_ last: UInt64) {
        outbox.lock.withLock { outbox.noteStreamSequence(last) }
    }

    private func check(_ config: jsStreamConfig) throws {
        var subjects: [String] = []
        for index in 0..<Int(config.SubjectsLen) {
            if let subject = config.Subjects[index] { subjects.append(String(cString: subject)) }
        }
        let pattern = options.subject.pattern
        guard subjects.contains(where: { NATSSubject.covers($0, pattern) }) else {
            throw StreamProblem.fatal("stream '\(options.stream)' exists with subjects [\(subjects.joined(separator: ", "))], which do not take this sink's subjects '\(pattern)' (subject '\(options.subject.render(node: "{node}", scope: "{scope}", event: "{event}"))'); name another stream, or give this one the subjects '\(options.subject.streamSubjects)'")
        }
        outbox.lock.withLock { outbox.duplicateWindowNs = config.Duplicates }
        if config.Duplicates < options.duplicateWindowNs {
            context.logger.notice("stream '\(options.stream)' drops duplicate message ids for \(Units.formatDuration(config.Duplicates)), less than this sink's duplicate_window \(Units.formatDuration(options.duplicateWindowNs)): a retry after that may be stored twice (counted in resent_past_duplicate_window)")
        }
    }

    // MARK: Publisher thread

    private func publishLoop() {
        var work: [Outbox.Work] = []
        work.reserveCapacity(256)
        var checks: [Outbox.Check] = []
        var checkWaitNs: Int64 = 0
        var publishOptions = jsPubOptions()
        jsPubOptions_Init(&publishOptions)
        publishOptions.MaxWait = options.ackTimeoutNs / 1_000_000
        var id = [CChar](repeating: 0, count: idPrefix.count + 24)
        for (index, byte) in idPrefix.enumerated() { id[index] = byte }
        var backoffNs: Int64 = 0
        var streamWaitNs: Int64 = 0
        var renewWaitNs: Int64 = 0
        var renewAtNs: Int64 = 0
        defer {
            let left = outbox.lock.withLock { () -> [OpaquePointer] in
                publisherDone = true
                defer { finishedMessages.removeAll() }
                return finishedMessages
            }
            for message in left { natsMsg_Destroy(message) }
        }
        while true {
            // No publish is under way here: what the ack handler gave back can go.
            freeFinishedMessages()
            if gaveUp.load(ordering: .acquiring) {
                if outbox.lock.withLock({ closing && (outbox.isEmpty || Clock.monotonicNs() >= closeDeadlineNs) || failure != nil }) { return }
                let now = Clock.monotonicNs()
                if now < renewAtNs {
                    waitIdle(min(renewAtNs - now, 100_000_000))
                    continue
                }
                renew(waitNs: &renewWaitNs)
                renewAtNs = Clock.monotonicNs() + renewWaitNs
                continue
            }
            let ready = outbox.lock.withLock { streamReady }
            if !ready {
                if outbox.lock.withLock({ closing && Clock.monotonicNs() >= closeDeadlineNs || failure != nil }) { return }
                if connected.load(ordering: .acquiring) {
                    do {
                        try ensureStream()
                        outbox.lock.withLock {
                            streamReady = true
                            outbox.lock.broadcast()
                        }
                        continue
                    } catch StreamProblem.fatal(let message) {
                        fail(located(message))
                        return
                    } catch {
                        if streamWaitNs == 0 { context.logger.warning("stream '\(options.stream)' not ready yet (\(error)); retrying") }
                        streamWaitNs = min(max(streamWaitNs * 2, 100_000_000), 2_000_000_000)
                    }
                }
                waitIdle(Swift.max(streamWaitNs, 100_000_000))
                continue
            }
            let finished: Bool = outbox.lock.withLock {
                while true {
                    if failure != nil { return true }
                    if closing, outbox.isEmpty || Clock.monotonicNs() >= closeDeadlineNs { return true }
                    if gaveUp.load(ordering: .acquiring) {
                        work.removeAll(keepingCapacity: true)
                        return false
                    }
                    if connected.load(ordering: .acquiring), outbox.hasWork || outbox.checksDue {
                        outbox.takeWork(limit: 256, into: &work)
                        checks = outbox.takeChecks()
                        return false
                    }
                    _ = outbox.lock.wait(untilMonotonicNs: Clock.monotonicNs() + 100_000_000)
                }
            }
            if finished { return }
            if !checks.isEmpty {
                lookInStream(checks, waitNs: &checkWaitNs)
                checks.removeAll()
            }
            var failed: [UInt64] = []
            var lastError: natsStatus = NATS_OK
            for item in work {
                let digits = writeDecimal(item.sequence, into: &id, at: idPrefix.count)
                id[idPrefix.count + digits] = 0
                var message: OpaquePointer?
                var status = natsMsg_Create(&message, item.subject, nil, item.bytes.assumingMemoryBound(to: CChar.self), item.length)
                if status == NATS_OK {
                    status = id.withUnsafeBufferPointer { id in
                        publishOptions.MsgId = id.baseAddress
                        return js_PublishMsgAsync(jetStream, &message, &publishOptions)
                    }
                }
                if status != NATS_OK {
                    natsMsg_Destroy(message)
                    failed.append(item.sequence)
                    lastError = status
                } else if !published.load(ordering: .relaxed) {
                    published.store(true, ordering: .releasing)
                }
            }
            if !failed.isEmpty {
                // Not connected after all, or the client's buffer is full:
                // hold them and try again shortly.
                outbox.lock.withLock {
                    for sequence in failed { outbox.retry(sequence, notSent: true) }
                }
                backoffNs = min(max(backoffNs * 2, 50_000_000), 1_000_000_000)
                context.logger.debug("publish failed (\(String(cString: natsStatus_GetText(lastError)))); retrying in \(Units.formatDuration(backoffNs))")
                waitIdle(backoffNs)
            } else {
                backoffNs = 0
            }
        }
    }

    /// Looks in the stream for the copies of `checks` stored earlier, before
    /// they are sent again (``Outbox/EntryState/checking``): a consumer of
    /// the sink's own, made for the look and deleted after it, reads the
    /// headers of the stream's messages from the first floor on, up to the
    /// stream's end as it was when the consumer was made, filtered on the
    /// narrowest subject that covers theirs (the tokens they share kept:
    /// with the default template their node's, `pipelined.web-1.*.*`, so a
    /// look skips what the rest of the fleet stored meanwhile). A message id of this run's prefix names
    /// an entry the stream holds: it is released as acknowledged, not sent
    /// again. The rest are sent again as new. With no answer the entries
    /// wait, and the look is tried again after `waitNs` (doubling up to
    /// 30 s); a refusal (a user allowed to publish only) sends them, and
    /// later resends, without a look (counted past the window as before).
    private func lookInStream(_ checks: [Outbox.Check], waitNs: inout Int64) {
        guard let jetStream else {
            outbox.lock.withLock { outbox.checkFailed(checks, retryAfterNs: 1_000_000_000) }
            return
        }
        let start = (checks.map(\.floor).min() ?? 0) + 1
        // Subjects are made once per (node, event kind), so few pointers.
        let subjects = Set(checks.map(\.subject)).map { String(cString: $0) }
        let filter = NATSSubject.narrowestFilter(covering: subjects)
        let sought = Set(checks.map(\.sequence))
        var found = Set<UInt64>()
        var read: UInt64 = 0
        // The stream sequence of the last message read (0: none, or no metadata).
        var through: UInt64 = 0
        let waitMs = Swift.max(options.ackTimeoutNs / 1_000_000, 500)
        enum Outcome { case answered, noAnswer(String), refused(String) }
        let outcome: Outcome = {
            var config = jsConsumerConfig()
            jsConsumerConfig_Init(&config)
            config.AckPolicy = js_AckNone
            config.DeliverPolicy = js_DeliverByStartSequence
            config.OptStartSeq = start
            config.HeadersOnly = true
            // Removed by the server should this process die before it deletes it.
            config.InactiveThreshold = 30_000_000_000
            var requestOptions = jsOptions()
            jsOptions_Init(&requestOptions)
            requestOptions.Wait = waitMs
            var info: UnsafeMutablePointer<jsConsumerInfo>?
            var code = jsErrCode(rawValue: 0)
            let made = (filter ?? "").withCString { text in
                config.FilterSubject = filter == nil ? nil : text
                return js_AddConsumer(&info, jetStream, options.stream, &config, &requestOptions, &code)
            }
            guard made == NATS_OK, let info else {
                let error = NATSError(made, code: code, "cannot make a consumer to look in stream '\(options.stream)'")
                return made == NATS_TIMEOUT || made == NATS_NO_RESPONDERS || made == NATS_CONNECTION_CLOSED || made == NATS_CONNECTION_DISCONNECTED
                    ? .noAnswer(error.message) : .refused(error.message)
            }
            let name = info.pointee.Name.map { String(cString: $0) } ?? ""
            let pending = info.pointee.NumPending
            jsConsumerInfo_Destroy(info)
            defer {
                var code = jsErrCode(rawValue: 0)
                _ = js_DeleteConsumer(jetStream, options.stream, name, &requestOptions, &code)
            }
            var subscription: OpaquePointer?
            var subOptions = jsSubOptions()
            jsSubOptions_Init(&subOptions)
            // Binding compares this with the consumer's configuration.
            subOptions.Config.HeadersOnly = true
            let subscribed = options.stream.withCString { stream in
                name.withCString { consumer in
                    subOptions.Stream = stream
                    subOptions.Consumer = consumer
                    return js_PullSubscribe(&subscription, jetStream, nil, nil, &requestOptions, &subOptions, &code)
                }
            }
            guard subscribed == NATS_OK else {
                return .noAnswer(NATSError(subscribed, code: code, "cannot read stream '\(options.stream)'").message)
            }
            defer { natsSubscription_Destroy(subscription) }
            while read < pending, found.count < sought.count {
                var list = natsMsgList()
                let status = natsSubscription_Fetch(&list, subscription, 256, waitMs, &code)
                guard status == NATS_OK else {
                    return .noAnswer(NATSError(status, code: code, "reading stream '\(options.stream)' stopped after \(read) of \(pending) message(s)").message)
                }
                for index in 0..<Int(list.Count) {
                    read += 1
                    if let sequence = ownSequence(list.Msgs[index]), sought.contains(sequence) { found.insert(sequence) }
                }
                if list.Count > 0, let last = list.Msgs[Int(list.Count) - 1] {
                    let sequence = JetStreamMessage.metadata(of: last).sequence
                    if sequence > 0 { through = sequence }
                }
                natsMsgList_Destroy(&list)
            }
            return .answered
        }()
        switch outcome {
        case .answered:
            waitNs = 0
            let result = outbox.lock.withLock {
                let result = outbox.checked(found: found, of: checks)
                outbox.lock.broadcast()
                return result
            }
            if result.records > 0 {
                context.metrics.add(context.metrics.recordsOut, UInt64(result.records))
                context.metrics.add(context.metrics.bytes, UInt64(result.bytes))
            }
            if result.found > 0 { foundInStream.add(UInt64(result.found)) }
            context.logger.notice("looked for \(checks.count) unacknowledged publish(es) in stream '\(options.stream)' (\(read) message(s) on '\(filter ?? ">")' read from sequence \(start)\(through > 0 ? " through \(through)" : "")) before sending them again: \(result.found) stored already (released, not sent again), \(checks.count - result.found) sent again")
        case .noAnswer(let reason):
            let refused = outbox.lock.withLock { () -> Bool in
                guard outbox.checksRefused else { return false }
                // Refused meanwhile (``connectionEvent(_:)``): sent without a look.
                outbox.checkFailed(checks, retryAfterNs: 0)
                outbox.sendWithoutChecks()
                outbox.lock.broadcast()
                return true
            }
            if refused {
                context.logger.warning("\(reason): this user may not make consumers (the server refused it), so publishes not acknowledged within half the duplicate window are sent again without looking in the stream (a copy past the window may be stored twice, counted in resent_past_duplicate_window)")
                return
            }
            waitNs = Swift.min(Swift.max(waitNs * 2, 1_000_000_000), 30_000_000_000)
            outbox.lock.withLock { outbox.checkFailed(checks, retryAfterNs: waitNs) }
            context.logger.warning("\(reason): \(checks.count) unacknowledged publish(es) wait, not sent again (a copy may be stored already, past the duplicate window); looking again in \(Units.formatDuration(waitNs))")
        case .refused(let reason):
            outbox.lock.withLock {
                outbox.sendWithoutChecks()
                outbox.lock.broadcast()
            }
            context.logger.warning("\(reason): publishes not acknowledged within half the duplicate window are sent again without looking in the stream (a copy past the window may be stored twice, counted in resent_past_duplicate_window)")
        }
    }

    /// The sequence of a message id of this run's prefix (`NODE:BOOT:SEQ`).
    private func ownSequence(_ message: OpaquePointer?) -> UInt64? {
        var value: UnsafePointer<CChar>?
        guard let message, natsMsgHeader_Get(message, "Nats-Msg-Id", &value) == NATS_OK, let value else { return nil }
        let matches = idPrefix.withUnsafeBufferPointer { prefix in strncmp(value, prefix.baseAddress!, prefix.count) == 0 }
        guard matches else { return nil }
        var sequence: UInt64 = 0
        var cursor = value.advanced(by: idPrefix.count)
        guard cursor.pointee != 0 else { return nil }
        while cursor.pointee != 0 {
            let byte = UInt8(bitPattern: cursor.pointee)
            guard byte >= 48, byte <= 57 else { return nil }
            sequence = sequence &* 10 &+ UInt64(byte - 48)
            cursor += 1
        }
        return sequence
    }

    /// Waits on the outbox for up to `ns` (woken by acks, writes, reconnects).
    private func waitIdle(_ ns: Int64) {
        outbox.lock.withLock { _ = outbox.lock.wait(untilMonotonicNs: Clock.monotonicNs() + ns) }
    }

    private func writeDecimal(_ value: UInt64, into buffer: inout [CChar], at offset: Int) -> Int {
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)
        return withUnsafeMutableBytes(of: &digits) { scratch in
            var count = 0
            var rest = value
            repeat {
                scratch[count] = UInt8(48 + rest % 10)
                rest /= 10
                count += 1
            } while rest > 0
            for index in 0..<count { buffer[offset + index] = CChar(bitPattern: scratch[count - 1 - index]) }
            return count
        }
    }

    // MARK: Client callbacks

    /// The C client's ack handler: a stored message (or a duplicate of one)
    /// releases its entry; a timeout or a refusal sends it again.
    /// Takes ownership of `message` (see ``finishedMessages``).
    func acknowledged(_ message: OpaquePointer?, ok: Bool, duplicate: Bool, streamSequence: UInt64, refusal: UnsafeMutablePointer<jsPubAckErr>?) {
        defer { release(message) }
        guard let sequence = Self.sequence(of: message) else { return }
        if ok {
            if duplicate { duplicates.add(1) }
            let released = outbox.lock.withLock {
                let windowWasFull = outbox.inflight >= outbox.maxPending
                let released = outbox.acknowledge(sequence, streamSequence: streamSequence)
                // Wake only whoever an ack can unblock: the publisher at a
                // full window, close() waiting for room or for the end. A
                // wake-up per ack would cost a futex call per event.
                if windowWasFull || closing || outbox.droppedUnreported > 0 { outbox.lock.broadcast() }
                return released
            }
            if released.records > 0 {
                context.metrics.add(context.metrics.recordsOut, UInt64(released.records))
                context.metrics.add(context.metrics.bytes, UInt64(released.bytes))
            }
            if released.pastWindow > 0 { countPastWindow(released.pastWindow) }
            return
        }
        let reason = refusal.map { refusal -> String in
            if let text = refusal.pointee.ErrText { return String(cString: text) }
            return String(cString: natsStatus_GetText(refusal.pointee.Err))
        } ?? "no ack"
        let timedOut = refusal?.pointee.Err == NATS_TIMEOUT
        let report: Bool = outbox.lock.withLock {
            outbox.retry(sequence)
            if !timedOut { outbox.pausedUntilNs = Clock.monotonicNs() + 250_000_000 }
            outbox.lock.broadcast()
            defer { lastRefusal = reason }
            return reason != lastRefusal
        }
        resent.add(1)
        if report { context.logger.notice("publish not acknowledged (\(reason)); sending again with the same message id") }
    }

    /// Counts resends that may be second copies; logs the first.
    private func countPastWindow(_ count: UInt64) {
        resentPastWindow.add(count)
        let (first, window) = outbox.lock.withLock { () -> (Bool, Int64) in
            defer { pastWindowReported = true }
            return (!pastWindowReported, outbox.duplicateWindowNs)
        }
        if first {
            context.logger.warning("a publish was answered more than the stream's duplicate window (\(Units.formatDuration(window))) after it was first sent, and was sent more than once: the stream may hold it twice (counted in resent_past_duplicate_window)")
        }
    }

    /// Frees a message the handler is done with once no publish can still be
    /// reading it: at the publisher thread's next pass, or now if it has returned.
    private func release(_ message: OpaquePointer?) {
        guard let message else { return }
        let now = outbox.lock.withLock { () -> Bool in
            if publisherDone { return true }
            finishedMessages.append(message)
            return false
        }
        if now { natsMsg_Destroy(message) }
    }

    /// On the publisher thread, between publishes: frees what the handler gave back.
    private func freeFinishedMessages() {
        let messages = outbox.lock.withLock { () -> [OpaquePointer] in
            defer { finishedMessages.removeAll(keepingCapacity: true) }
            return finishedMessages
        }
        for message in messages { natsMsg_Destroy(message) }
    }

    /// The sequence number at the end of the message's `Nats-Msg-Id`.
    private static func sequence(of message: OpaquePointer?) -> UInt64? {
        var value: UnsafePointer<CChar>?
        guard let message, natsMsgHeader_Get(message, "Nats-Msg-Id", &value) == NATS_OK, let value else { return nil }
        var sequence: UInt64 = 0
        var end = strlen(value)
        var scale: UInt64 = 1
        while end > 0 {
            let byte = UInt8(bitPattern: value[end - 1])
            guard byte >= 48, byte <= 57 else { break }
            sequence += UInt64(byte - 48) * scale
            scale &*= 10
            end -= 1
        }
        return sequence
    }

    fileprivate func connectionEvent(_ event: NATSConnection.Event) {
        switch event {
        case .connected(let url), .reconnected(let url):
            connected.store(true, ordering: .releasing)
            guard !tornDown.load(ordering: .acquiring) else { return }
            let again = event != .connected(url: url)
            context.logger.info("\(again ? "reconnected" : "connected") to \(url ?? options.endpoint.urlList)")
            if again { reclaimPending() }
            outbox.lock.withLock { outbox.lock.broadcast() }
        case .disconnected:
            connected.store(false, ordering: .releasing)
            // Our own close at the end disconnects too: nothing to report.
            guard !tornDown.load(ordering: .acquiring) else { return }
            let held = outbox.lock.withLock { outbox.count }
            context.logger.warning("disconnected from the nats server; reconnecting, holding \(held) record(s)")
        case .closed:
            connected.store(false, ordering: .releasing)
        case .gaveUp(let reason):
            connected.store(false, ordering: .releasing)
            guard !tornDown.load(ordering: .acquiring) else { return }
            let held = outbox.lock.withLock { outbox.count }
            context.logger.error("the nats client gave up on the connection (\(reason)); making a new one, holding \(held) record(s)")
            gaveUp.store(true, ordering: .releasing)
            outbox.lock.withLock { outbox.lock.broadcast() }
        case .error(let text):
            context.logger.warning("nats client: \(text)")
            // This user may publish but not make consumers: no look can be
            // answered, so what waits for one goes out without it.
            if text.contains("$JS.API.CONSUMER.") {
                outbox.lock.withLock {
                    outbox.sendWithoutChecks()
                    outbox.lock.broadcast()
                }
            }
        }
    }

    /// After a reconnect, what the old connection sent may never be
    /// answered: take every unanswered publish back and send it again (the
    /// stream drops the ones it already has, by id).
    private func reclaimPending() {
        var pending = natsMsgList()
        // The client's callback thread against teardown on the sink's: the
        // context must not be destroyed under the call.
        let taken = handles.withLock { () -> Bool in
            guard !tornDown.load(ordering: .acquiring), published.load(ordering: .acquiring), let jetStream else { return false }
            return js_PublishAsyncGetPendingList(&pending, jetStream) == NATS_OK
        }
        guard taken else { return }
        defer { natsMsgList_Destroy(&pending) }
        var sequences: [UInt64] = []
        for index in 0..<Int(pending.Count) {
            if let sequence = Self.sequence(of: pending.Msgs[index]) { sequences.append(sequence) }
        }
        outbox.lock.withLock {
            for sequence in sequences.sorted() { outbox.retry(sequence) }
            outbox.lock.broadcast()
        }
        if !sequences.isEmpty {
            resent.add(UInt64(sequences.count))
            context.logger.info("sending \(sequences.count) unacknowledged publish(es) again after the reconnect")
        }
    }

    // MARK: State for the sink's thread

    private func fail(_ error: StageStartError) {
        outbox.lock.withLock {
            if failure == nil { failure = error }
            outbox.lock.broadcast()
        }
    }

    /// True once the link gave up. Call with the outbox's lock held.
    var hasFailedLocked: Bool { failure != nil }

    /// Throws what made the link give up (a stream that cannot take our subjects).
    func throwIfFailed() throws {
        if let failure = outbox.lock.withLock({ failure }) { throw failure }
    }

    /// Logs once per episode that the ring is full.
    func reportDropping() {
        let first = outbox.lock.withLock {
            defer { droppingReported = true }
            return !droppingReported
        }
        if first {
            context.logger.warning("buffer_bytes (\(Units.formatSize(options.bufferBytes))) is full of unacknowledged events: dropping new ones, counted (a lost record follows when there is room)")
        }
    }

    /// Called with the outbox locked once the dropped count is on its way.
    func reportDropEnded(_ count: UInt64) {
        droppingReported = false
        context.logger.warning("dropped \(count) event(s) while buffer_bytes was full; a lost record with the count is on its way to the stream")
    }

    /// Stops publishing once everything is acknowledged or `deadlineNs`
    /// passes; closes the connection. Returns what was never acknowledged.
    func finish(deadlineNs: Int64) -> (events: Int, weight: UInt64, unreported: UInt64) {
        outbox.lock.withLock {
            closing = true
            closeDeadlineNs = deadlineNs
            outbox.lock.broadcast()
        }
        thread?.join()
        let left = outbox.lock.withLock {
            // What is left unanswered may be in the stream too, twice even.
            let pastWindow = outbox.heldResendsPastWindow(nowNs: Clock.monotonicNs())
            outbox.closed = true
            return (outbox.held, outbox.droppedUnreported, pastWindow, outbox.duplicateWindowNs)
        }
        if left.2 > 0 { resentPastWindow.add(left.2) }
        let resent = resent.value
        let pastWindow = resentPastWindow.value
        if resent > pastWindow { context.logger.info("\(resent - pastWindow) publish(es) were sent again within the stream's duplicate window (the stream dropped the duplicates by message id)") }
        if foundInStream.value > 0 { context.logger.info("\(foundInStream.value) publish(es) whose acks were lost were found stored in the stream by a look, and not sent again") }
        if duplicates.value > 0 { context.logger.info("the stream already held \(duplicates.value) of the messages published (sent again, with their message ids): it did not store them twice") }
        if pastWindow > 0 {
            context.logger.warning("\(pastWindow) publish(es) were sent again and answered only after the stream's duplicate window (\(Units.formatDuration(left.3))): up to \(pastWindow) of them may be stored twice in stream '\(options.stream)'")
        }
        teardown()
        return (left.0.records, left.0.weight, left.1)
    }

    private func teardown() {
        handles.withLock {
            tornDown.store(true, ordering: .releasing)
            if let jetStream { jsCtx_Destroy(jetStream) }
            jetStream = nil
        }
        connection?.close()
        connection = nil
        target?.retired.store(true, ordering: .releasing)
        target = nil
    }
}

/// The C client's handle on a link, one per connection: a weak reference,
/// so a late callback after the sink is gone finds nothing, and a flag, so
/// that one from a connection the client gave up on is ignored.
final class AckTarget: @unchecked Sendable {
    // `link` is set once at creation; a weak reference is safe to read from
    // any thread. `retired` is atomic.
    weak var link: PublishLink?
    let retired = ManagedAtomic<Bool>(false)
    init(_ link: PublishLink) { self.link = link }
}
