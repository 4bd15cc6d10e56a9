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

/// The `nats` source: an aggregator's end of the fleet. It reads a
/// JetStream stream through a durable pull consumer and acknowledges a
/// message only once every sink it reached has written it (the batch's
/// ``BatchCompletion``), so an aggregator killed at any moment is delivered
/// the unacknowledged messages again when it restarts: at least once.
///
/// - The consumer (`durable`) is created if missing (`deliver`, `ack_wait`,
///   `max_ack_pending`, the `subjects` filter) and updated if its `ack_wait`
///   or `max_ack_pending` differ; a consumer with another filter is an error.
/// - Acknowledgements are cumulative (JetStream's `AckAll`): one per batch,
///   for the highest stream sequence below every message still unwritten
///   (see ``AckFloor``). Acking each message made the server spend more on
///   acknowledgements than on the messages. A consumer made with explicit
///   acknowledgements (by an older pipelined) is read as it is, one
///   acknowledgement per message.
/// - Several `subjects` are read through one consumer each (nats-server 2.9
///   filters a consumer on one subject), named by
///   ``NATSSourceOptions/consumers``. They are fetched in turn, one fetch
///   each, so a subject with a backlog never starves another; a message is
///   acknowledged on the consumer that delivered it. A subject the stream
///   does not take is a pipeline error located at it (exit 78 at start).
/// - Records keep the `node` they were published with.
/// - A message that is not a record is counted as malformed and
///   terminated (never delivered again); one a sink lost (a dropping queue,
///   a failed sink) is given back (`nak`: delivered again a second later,
///   twice as late for each batch given back in a row, at most `ack_wait`),
///   and nothing after it is acknowledged until it has been written.
/// - After a restart, what the earlier run left unacknowledged is read
///   again from the stream at once (``ConsumerLink/readAgain(_:emit:)``)
///   instead of waiting `ack_wait` for the server to deliver it again;
///   should the server deliver it again anyway, it is acknowledged, not
///   written twice.
/// - Messages delivered more than once are counted (`redelivered`), and
///   the total is logged at the end.
/// - An unreachable server, or a stream that does not exist yet, is waited
///   for (logged), never an error.
public final class NATSSource: EventSource {
    public static let descriptor = StageDescriptor.source(
        type: "nats", summary: "read records from a NATS JetStream stream through a durable pull consumer, acknowledged once every sink wrote them",
        options: NATSSourceOptions.self, make: NATSSource.init)

    public let options: NATSSourceOptions
    private let stopped = ManagedAtomic<Bool>(false)
    // Set in prepare, used by run; both on the runtime's threads in sequence.
    private nonisolated(unsafe) var consumer: ConsumerLink?
    private nonisolated(unsafe) var context: StageContext?
    /// Messages delivered more than once (the server's count, from each
    /// message's metadata): the stage's `redelivered` series.
    private nonisolated(unsafe) var redelivered: StageMetrics.Counter?

    public init(_ options: NATSSourceOptions) {
        self.options = options
    }

    public func prepare(_ context: StageContext) throws {
        self.context = context
        redelivered = context.metrics.counter("redelivered", help: "messages delivered more than once: read again after a restart (an earlier run left them unacknowledged), or delivered again by the server (not acknowledged within ack_wait)")
        let link = ConsumerLink(options: options, context: context)
        do {
            try link.connect()
        } catch let error as NATSError {
            throw options.endpoint.startError(error, stage: context.id, label: "source '\(context.id)'")
        }
        // A subject the stream refuses is a mistake in the file: say so now.
        do {
            try link.checkConsumersIfConnected()
        } catch {
            link.close(waitingUpToNs: 0, logger: context.logger)
            throw error
        }
        consumer = link
    }

    public func stop() {
        stopped.store(true, ordering: .releasing)
    }

    /// How long the end of ``run(_:)`` waits for the sinks to write what was
    /// emitted before it closes the connection.
    static let closeWaitNs: Int64 = 20_000_000_000

    public func run(_ output: SourceOutput) throws {
        guard let consumer, let context, let redelivered else { return }
        // The sinks go on writing what was emitted (the queues close only once
        // every source has returned): wait for those acknowledgements, then
        // close the connection, so that none is left open at exit.
        defer {
            consumer.close(waitingUpToNs: Self.closeWaitNs, logger: context.logger)
            self.consumer = nil
        }
        let decoder = NDJSONDecoder(defaultNode: context.node)
        var reported = 0
        var acknowledgedOnly = 0
        /// A message's record, or nil when it is not one (counted as malformed, logged the first times).
        func decodeOrCount(_ message: OpaquePointer, length: Int, then what: String = "terminated") -> PipelineRecord? {
            do {
                return try decoder.decode(UnsafeRawBufferPointer(start: natsMsg_GetData(message), count: length))
            } catch {
                context.metrics.add(context.metrics.malformed, 1)
                if reported < 10 {
                    reported += 1
                    context.logger.warning("\(String(cString: natsMsg_GetSubject(message))): not an event record, \(what): \(error)")
                }
                return nil
            }
        }
        var waitingSince: Int64?
        var turn = 0
        // Fetches in a row that found nothing: once every consumer had its
        // turn empty-handed, the next fetch waits for messages.
        var emptyInARow = 0
        while !stopped.load(ordering: .acquiring) {
            if consumer.renewIfGaveUp() {
                usleep(100_000)
                continue
            }
            guard let pulls = try consumer.subscriptions(waitingSince: &waitingSince) else {
                usleep(200_000)
                continue
            }
            consumer.tick()
            let pull = pulls[turn % pulls.count]
            turn &+= 1
            // Once, after a restart: what the last run left unacknowledged.
            consumer.readAgain(pull) { batch in
                var records: [PipelineRecord] = []
                var sequences: [UInt64] = []
                for (message, sequence) in batch {
                    let length = Int(natsMsg_GetDataLength(message))
                    context.metrics.add(context.metrics.bytes, UInt64(length))
                    if let record = decodeOrCount(message, length: length, then: "skipped") {
                        records.append(record)
                        sequences.append(sequence)
                    }
                    natsMsg_Destroy(message)
                }
                redelivered.add(UInt64(records.count))
                if !records.isEmpty {
                    let delivery = consumer.delivering([], sequences: sequences, from: pull)
                    output.emit(EventBatch(records, completion: BatchCompletion { written in delivery.finish(acknowledge: written) }))
                }
                return sequences
            }
            var list = natsMsgList()
            var code = jsErrCode(rawValue: 0)
            let status: natsStatus
            let waits = pulls.count == 1 || emptyInARow >= pulls.count
            if waits {
                // Returns at once with what is there, else waits for the first message.
                let waitMs = pulls.count == 1 ? 500 : Int64(max(100, 500 / pulls.count))
                status = natsSubscription_Fetch(&list, pull.subscription, Int32(options.batch), waitMs, &code)
            } else {
                // What is there now, without waiting: the next consumer's turn comes at once.
                var request = jsFetchRequest()
                jsFetchRequest_Init(&request)
                request.Batch = Int32(options.batch)
                request.NoWait = true
                request.Expires = 5_000_000_000
                status = natsSubscription_FetchRequest(&list, pull.subscription, &request)
            }
            // A fetch that does not wait is answered "404 no messages" when there are none.
            if status == NATS_TIMEOUT || !waits && status == NATS_NOT_FOUND {
                emptyInARow += 1
                continue
            }
            guard status == NATS_OK else {
                consumer.fetchFailed(pull, NATSError(status, code: code, "fetch from consumer '\(pull.name)' failed"))
                usleep(200_000)
                continue
            }
            emptyInARow = 0
            var records: [PipelineRecord] = []
            records.reserveCapacity(Int(list.Count))
            var messages: [OpaquePointer] = []
            messages.reserveCapacity(Int(list.Count))
            var sequences: [UInt64] = []
            sequences.reserveCapacity(Int(list.Count))
            // Delivered again by the server, and written already when read again after a restart.
            var writtenMessages: [OpaquePointer] = []
            var writtenSequences: [UInt64] = []
            for index in 0..<Int(list.Count) {
                guard let message = list.Msgs[index] else { continue }
                // The list gives up the message: the batch's completion owns it.
                list.Msgs[index] = nil
                let (sequence, deliveries) = JetStreamMessage.metadata(of: message)
                let again = deliveries > 1
                if again, consumer.writtenAlready(sequence, from: pull) {
                    writtenMessages.append(message)
                    writtenSequences.append(sequence)
                    continue
                }
                if again, consumer.beingWrittenAgain(sequence, from: pull) {
                    // Read again and not written yet: the server is asked
                    // for it later, when it is written (then acknowledged
                    // only) or its write failed (then written).
                    natsMsg_NakWithDelay(message, ConsumerLink.nakDelayNs / 1_000_000, nil)
                    natsMsg_Destroy(message)
                    continue
                }
                if again { redelivered.add(1) }
                let length = Int(natsMsg_GetDataLength(message))
                context.metrics.add(context.metrics.bytes, UInt64(length))
                if let record = decodeOrCount(message, length: length) {
                    records.append(record)
                    messages.append(message)
                    sequences.append(sequence)
                } else {
                    natsMsg_Term(message, nil)
                    natsMsg_Destroy(message)
                }
            }
            natsMsgList_Destroy(&list)
            if !writtenMessages.isEmpty {
                acknowledgedOnly += writtenMessages.count
                consumer.delivering(writtenMessages, sequences: writtenSequences, from: pull).finish(acknowledge: true)
            }
            guard !records.isEmpty else { continue }
            // Acknowledged on the consumer that delivered it (its messages' reply subjects).
            let delivery = consumer.delivering(messages, sequences: sequences, from: pull)
            output.emit(EventBatch(records, completion: BatchCompletion { written in delivery.finish(acknowledge: written) }))
        }
        let count = redelivered.value
        if count > 0 {
            context.logger.notice("\(count) message(s) were delivered again (not acknowledged before an earlier stop or within ack_wait)")
        }
        if acknowledgedOnly > 0 {
            context.logger.notice("\(acknowledgedOnly) message(s) the server delivered again once ack_wait ran out had been read again from the stream and written already: acknowledged, not written twice")
        }
    }
}

/// The messages of one batch, acknowledged once every sink wrote them (or
/// given back for redelivery if one did not).
final class Delivery: @unchecked Sendable {
    // Handed over once, at init; the rest is read and changed only under the
    // link's `deliveries` lock (``finish(acknowledge:)`` runs once, on
    // whichever sink thread wrote last). Hence @unchecked Sendable.
    fileprivate var messages: [OpaquePointer]
    /// The stream sequence of each message (0 when its metadata could not be read).
    fileprivate let sequences: [UInt64]
    fileprivate let floor: AckFloor
    fileprivate var state = State.inFlight
    /// When the server last heard of these messages (delivered, or told they are in progress).
    fileprivate var touchedNs = Clock.monotonicNs()
    /// The lowest and highest of `sequences`, and where the highest is.
    fileprivate let lowest: UInt64
    fileprivate let highest: UInt64
    fileprivate let highestAt: Int
    /// Inherited messages read again from the stream (no messages of the
    /// consumer to acknowledge: see ``ConsumerLink/readAgain(_:emit:)``).
    fileprivate let readAgain: Bool
    private let link: ConsumerLink

    enum State { case inFlight, written }

    fileprivate init(messages: [OpaquePointer], sequences: [UInt64], floor: AckFloor, link: ConsumerLink) {
        self.messages = messages
        self.sequences = sequences
        readAgain = messages.isEmpty
        self.floor = floor
        self.link = link
        var lowest = UInt64.max, highest: UInt64 = 0, highestAt = 0
        for (index, sequence) in sequences.enumerated() {
            lowest = min(lowest, sequence)
            if sequence >= highest { highest = sequence; highestAt = index }
        }
        self.lowest = lowest
        self.highest = highest
        self.highestAt = highestAt
    }

    func finish(acknowledge: Bool) {
        link.finish(self, written: acknowledge)
    }
}

/// One consumer's cumulative acknowledgement (`AckAll`): acknowledging
/// stream sequence N acknowledges every message of the consumer up to N.
/// So N may be acknowledged only when no message below it is unwritten:
/// neither in flight to the sinks (batches finish out of order when a
/// filter drops a whole batch) nor given back after a sink lost it. The
/// floor is the lowest such sequence; each finished batch acknowledges the
/// highest written sequence below it, once. A message given back that does
/// not come again (the stream dropped it by age or size) holds the floor for
/// its delay and at most ``givenBackHoldNs`` more; then it is let go (its
/// loss was counted).
/// Touched only under the link's `deliveries` lock.
final class AckFloor {
    /// The consumer acknowledges each message (made with explicit acknowledgements).
    var acksEach = false
    /// Batches delivered and not yet acknowledged, in the order they came.
    fileprivate var open: [Delivery] = []
    /// Sequences given back, with the monotonic time after which they no longer hold the floor.
    private var givenBack: [UInt64: Int64] = [:]
    private var acknowledged: UInt64 = 0
    let givenBackHoldNs: Int64

    init(givenBackHoldNs: Int64) {
        self.givenBackHoldNs = givenBackHoldNs
    }

    /// Batches given back in a row: each waits twice as long as the one
    /// before (from ``ConsumerLink/nakDelayNs``, at most `ack_wait`), so a
    /// sink that stays down (a full disk) is not fed the same messages
    /// again and again.
    private var givenBackInARow = 0

    /// Whether the consumer's state on the server was taken in (``inherit(_:in:holdingForNs:)``).
    var inherited = false

    /// What an earlier run was delivered and did not acknowledge: `count`
    /// messages with stream sequences in `sequences` (the consumer's ack
    /// floor up to its last delivered sequence; a consumer with a filter
    /// has only some of them). The server delivers them again only after
    /// `ack_wait`, so the source reads them again from the stream at once
    /// (``ConsumerLink/readAgain(_:emit:)``). Until they are written an
    /// acknowledgement past them would take them for written: they hold the
    /// floor at the range's start until `count` of them have been written
    /// again, or for `hold` at most (one may never come: the stream dropped
    /// it).
    private var inheritedRange: ClosedRange<UInt64>?
    private var inheritedLeft = 0
    private var inheritedSeen: Set<UInt64> = []
    private var inheritedUntil: Int64 = 0
    /// The inherited range, until it has been read again from the stream.
    fileprivate(set) var toReadAgain: ClosedRange<UInt64>?
    /// Inherited messages read again and written: when the server delivers
    /// one of them again anyway (its `ack_wait` ran out before an
    /// acknowledgement covered it), it is acknowledged, not written twice.
    /// Moved to ``rewrittenAcknowledged`` once an acknowledgement covers it.
    private var rewritten: Set<UInt64> = []
    /// Rewritten ones an acknowledgement covered, oldest first, each set
    /// kept until `givenBackHoldNs` after that acknowledgement: a delivery
    /// the server sent before it took the acknowledgement can still arrive.
    private var rewrittenAcknowledged: [(until: Int64, sequences: Set<UInt64>)] = []
    /// Inherited messages read again and not written yet (their batch is
    /// on its way to the sinks): see ``isBeingRewritten(_:)``.
    private var rewriting: Set<UInt64> = []

    func inherit(_ count: Int, in sequences: ClosedRange<UInt64>, holdingForNs hold: Int64) {
        guard count > 0 else { return }
        inheritedRange = sequences
        toReadAgain = sequences
        inheritedLeft = count
        inheritedUntil = Clock.monotonicNs() + hold
        holdEndsNs = min(holdEndsNs, inheritedUntil)
    }

    /// The inherited range was read again from the stream, which holds
    /// `found` of its messages now (nil: the read failed, the server
    /// delivers them again after `ack_wait`): only those hold the floor.
    fileprivate func readAgainDone(found: Set<UInt64>?) {
        toReadAgain = nil
        guard let found, inheritedRange != nil else { return }
        inheritedLeft = found.subtracting(inheritedSeen).count
        if inheritedLeft <= 0 { forgetInherited() }
        acknowledge()
    }

    /// Whether `sequence` was read again and written already.
    fileprivate func wasRewritten(_ sequence: UInt64) -> Bool {
        rewritten.contains(sequence) || rewrittenAcknowledged.contains { $0.sequences.contains(sequence) }
    }

    /// Whether `sequence` was read again and its batch is not written yet:
    /// a delivery of it by the server meanwhile is neither written (it may
    /// be in a moment) nor acknowledged (the write may fail).
    fileprivate func isBeingRewritten(_ sequence: UInt64) -> Bool {
        rewriting.contains(sequence)
    }

    /// A batch handed to the sinks.
    fileprivate func opened(_ delivery: Delivery) {
        open.append(delivery)
        if delivery.readAgain { rewriting.formUnion(delivery.sequences) }
    }

    /// When the earliest hold (a sequence given back, the inherited range)
    /// ends, `.max` when none is held. Once it has passed, ``tick(ackWaitNs:)``
    /// acknowledges what the hold kept back: no batch may finish to do it,
    /// because with `max_ack_pending` messages held the server sends no more.
    private var holdEndsNs: Int64 = .max

    /// A written batch: the inherited messages it wrote again.
    private func rewrote(_ sequences: [UInt64]) {
        guard let range = inheritedRange else { return }
        for sequence in sequences where range.contains(sequence) && inheritedSeen.insert(sequence).inserted {
            inheritedLeft -= 1
        }
        if inheritedLeft <= 0 { forgetInherited() }
    }

    private func forgetInherited() {
        inheritedRange = nil
        inheritedSeen = []
    }

    /// Called by the fetch loop between fetches. A hold that has ended lets
    /// its acknowledgement go. Written batches still held below the floor
    /// must not reach `ack_wait`, or the server would deliver them again
    /// (duplicates beyond the window of a restart): past half of it, each
    /// message is said to be in progress, which starts its wait anew.
    func tick(ackWaitNs: Int64) {
        guard !acksEach, !open.isEmpty else { return }
        let now = Clock.monotonicNs()
        if now >= holdEndsNs { acknowledge() }
        for delivery in open where delivery.state == .written && now - delivery.touchedNs > ackWaitNs / 2 {
            for message in delivery.messages { natsMsg_InProgress(message, nil) }
            delivery.touchedNs = now
        }
    }

    fileprivate func finished(_ delivery: Delivery, written: Bool, firstDelayNs: Int64, mostDelayNs: Int64) {
        if delivery.readAgain { rewriting.subtract(delivery.sequences) }
        if acksEach {
            for message in delivery.messages {
                if written { natsMsg_Ack(message, nil) }
                natsMsg_Destroy(message)
            }
            delivery.messages = []
            open.removeAll { $0 === delivery }
            return
        }
        if written {
            delivery.state = .written
            givenBackInARow = 0
            rewrote(delivery.sequences)
            if delivery.readAgain { rewritten.formUnion(delivery.sequences) }
            if !givenBack.isEmpty {
                for sequence in delivery.sequences { givenBack[sequence] = nil }
            }
        } else {
            // Come again soon, and hold every later acknowledgement meanwhile.
            let delayNs = min(firstDelayNs << min(givenBackInARow, 16), mostDelayNs)
            givenBackInARow += 1
            let until = Clock.monotonicNs() + delayNs + givenBackHoldNs
            holdEndsNs = min(holdEndsNs, until)
            for (message, sequence) in zip(delivery.messages, delivery.sequences) {
                natsMsg_NakWithDelay(message, delayNs / 1_000_000, nil)  // (the client takes milliseconds)
                natsMsg_Destroy(message)
                givenBack[sequence] = until
            }
            delivery.messages = []
            open.removeAll { $0 === delivery }
        }
        acknowledge()
    }

    /// Acknowledges the highest written sequence below the floor, and frees
    /// the batches that acknowledgement covers.
    private func acknowledge() {
        var floor = UInt64.max
        let now = Clock.monotonicNs()
        holdEndsNs = .max
        if let range = inheritedRange {
            if now > inheritedUntil {
                forgetInherited()
            } else {
                floor = range.lowerBound
                holdEndsNs = inheritedUntil
            }
        }
        if !givenBack.isEmpty {
            givenBack = givenBack.filter { $0.value > now }
            floor = min(floor, givenBack.keys.min() ?? .max)
            holdEndsNs = min(holdEndsNs, givenBack.values.min() ?? .max)
        }
        for delivery in open where delivery.state == .inFlight {
            floor = min(floor, delivery.lowest)
        }
        var best: (delivery: Delivery, index: Int)?
        var bestSequence = acknowledged
        // A batch read again has no message of the consumer to acknowledge:
        // a later one's acknowledgement covers it.
        for delivery in open where delivery.state == .written && !delivery.readAgain {
            if delivery.highest < floor {
                if delivery.highest > bestSequence { best = (delivery, delivery.highestAt); bestSequence = delivery.highest }
                continue
            }
            // Part of the batch lies above the floor (redelivered messages among new ones).
            for (index, sequence) in delivery.sequences.enumerated() where sequence < floor && sequence > bestSequence {
                best = (delivery, index)
                bestSequence = sequence
            }
        }
        guard let best else { return }
        natsMsg_Ack(best.delivery.messages[best.index], nil)
        acknowledged = bestSequence
        if !rewritten.isEmpty {
            let covered = rewritten.filter { $0 <= bestSequence }
            if !covered.isEmpty {
                rewritten.subtract(covered)
                rewrittenAcknowledged.append((now + givenBackHoldNs, covered))
            }
        }
        while let oldest = rewrittenAcknowledged.first, oldest.until <= now { rewrittenAcknowledged.removeFirst() }
        open.removeAll { delivery in
            guard delivery.state == .written, delivery.highest <= bestSequence else { return false }
            delivery.messages.forEach { natsMsg_Destroy($0) }
            delivery.messages = []
            return true
        }
    }
}

/// The source's connection and pull subscription. Batches in flight are
/// counted: ``close(waitingUpToNs:logger:)`` waits for their
/// acknowledgements before it closes the connection; one that completes
/// later finds it closed and leaves its messages to be delivered again.
final class ConsumerLink: @unchecked Sendable {
    // `connection` and `jetStream` are set in `connect()` (prepare, and
    // ``renewIfGaveUp()`` on the run thread) and cleared in `close` (the
    // end of run); the subscriptions and the log
    // state are touched only by the thread that prepares, then the source's
    // run thread, in sequence; the sink threads
    // reach only `finish`, under `deliveries`. Hence @unchecked Sendable.
    let options: NATSSourceOptions
    let context: StageContext
    private var connection: NATSConnection?
    private var jetStream: OpaquePointer?
    /// One pull subscription per consumer, in `subjects` order, once all are made.
    private var subscribed: [Pull] = []
    /// Subscriptions given up after a failed fetch: messages of batches in
    /// flight still point at them, so they are freed only with the link.
    private var retired: [OpaquePointer] = []
    private var lastProblem = ""
    private let connected = ManagedAtomic<Bool>(false)
    /// Set before the connection is closed on purpose.
    private let closing = ManagedAtomic<Bool>(false)
    /// Set when the client gave up on the connection (``renewIfGaveUp()``).
    private let gaveUp = ManagedAtomic<Bool>(false)
    /// Set to ignore the current connection's late events once it is retired.
    private var retiredFlag = ManagedAtomic<Bool>(false)
    /// Connections the client gave up on, with their JetStream contexts:
    /// messages of batches in flight still point at them, so they are
    /// freed only with the link.
    private var retiredConnections: [(connection: NATSConnection, jetStream: OpaquePointer?)] = []
    /// When the next new connection is tried, and the wait before the one after.
    private var renewAtNs: Int64 = 0
    private var renewWaitNs: Int64 = 0

    /// How many links of this process read each durable (`stream/name`): a
    /// reload starts the new source beside the old one for a moment, so a
    /// pull request of the old is not another reader's.
    private static let readersHere = Mutex<[String: Int]>([:])
    /// The durables this link counts in ``readersHere``.
    private var countedHere: Set<String> = []

    init(options: NATSSourceOptions, context: StageContext) {
        self.options = options
        self.context = context
        consumers = options.consumers
        // A message given back holds the acknowledgements for its delay and
        // as long as the server could then take to deliver it (ack_wait),
        // and a little more.
        let hold = options.ackWaitNs + 5_000_000_000
        floors = Dictionary(uniqueKeysWithValues: consumers.map { ($0.name, AckFloor(givenBackHoldNs: hold)) })
    }

    /// How long the first batch given back waits before it is delivered again.
    static let nakDelayNs: Int64 = 1_000_000_000

    /// Each consumer's acknowledgements, by consumer name.
    private let floors: [String: AckFloor]

    /// The consumers to read, worked out once (``NATSSourceOptions/consumers``).
    private let consumers: [(name: String, subject: String?)]

    /// Guards `inFlight` and `closed` against the sink threads that acknowledge.
    private let deliveries = ConditionLock()
    private var inFlight = 0
    private var closed = false

    /// A batch of messages from `pull`'s consumer is on its way to the sinks.
    func delivering(_ messages: [OpaquePointer], sequences: [UInt64], from pull: Pull) -> Delivery {
        let floor = floors[pull.name]!
        let delivery = Delivery(messages: messages, sequences: sequences, floor: floor, link: self)
        deliveries.withLock {
            inFlight += 1
            floor.opened(delivery)
        }
        return delivery
    }

    /// Between fetches: acknowledges what an ended hold kept back, and keeps
    /// the batches still held below a floor from being delivered again.
    func tick() {
        deliveries.withLock {
            guard !closed else { return }
            floors.values.forEach { $0.tick(ackWaitNs: options.ackWaitNs) }
        }
    }

    /// A batch is done: acknowledge what can be, give back what a sink
    /// lost. After ``close(waitingUpToNs:logger:)`` it is left alone (the
    /// connection is gone; the server delivers it again after `ack_wait`).
    func finish(_ delivery: Delivery, written: Bool) {
        deliveries.withLock {
            if !closed {
                delivery.floor.finished(delivery, written: written, firstDelayNs: min(Self.nakDelayNs, options.ackWaitNs), mostDelayNs: options.ackWaitNs)
            }
            inFlight -= 1
            deliveries.broadcast()
        }
    }

    /// Waits up to `waitingUpToNs` for every batch in flight, then closes
    /// the subscription and the connection.
    func close(waitingUpToNs wait: Int64, logger: Logger) {
        let deadline = Clock.monotonicNs() + wait
        let left = deliveries.withLock { () -> Int in
            while inFlight > 0 {
                if !deliveries.wait(untilMonotonicNs: deadline), Clock.monotonicNs() >= deadline { break }
            }
            closed = true
            // What is still held stays unacknowledged: delivered again later.
            floors.values.forEach { $0.open.removeAll() }
            return inFlight
        }
        if left > 0 {
            logger.warning("\(left) batch(es) not written by every sink within \(Units.formatDuration(wait)): left unacknowledged, they come again")
        }
        closing.store(true, ordering: .releasing)
        let counted = countedHere
        countedHere = []
        Self.readersHere.withLock { readers in
            for key in counted {
                readers[key, default: 1] -= 1
                if readers[key] == 0 { readers[key] = nil }
            }
        }
        subscribed.forEach { natsSubscription_Destroy($0.subscription) }
        retired.forEach { natsSubscription_Destroy($0) }
        subscribed = []
        retired = []
        if let jetStream { jsCtx_Destroy(jetStream) }
        jetStream = nil
        connection?.close()
        connection = nil
        for old in retiredConnections {
            if let jetStream = old.jetStream { jsCtx_Destroy(jetStream) }
            old.connection.close()
        }
        retiredConnections = []
    }

    /// On the run thread, before each fetch. When the client gave up on the
    /// connection (credentials refused twice in a row), retires it and makes
    /// a new one, again after 1 s, 2 s, 4 s ... (at most a minute) while the
    /// server refuses. True while there is no connection to fetch on. What
    /// was in flight on the old one is acknowledged there in vain: the
    /// server delivers it again after `ack_wait`.
    func renewIfGaveUp() -> Bool {
        guard gaveUp.load(ordering: .acquiring) else { return false }
        let now = Clock.monotonicNs()
        guard now >= renewAtNs else { return true }
        if let connection {
            retiredFlag.store(true, ordering: .releasing)
            retired.append(contentsOf: subscribed.map(\.subscription))
            subscribed = []
            retiredConnections.append((connection, jetStream))
            self.connection = nil
            jetStream = nil
        }
        do {
            try connect(renewing: true)
            gaveUp.store(false, ordering: .releasing)
            renewWaitNs = 0
        } catch {
            renewWaitNs = NATSConnection.renewalWaitNs(after: renewWaitNs)
            context.logger.warning("a new connection to \(options.endpoint.urlList) was refused (\(error)); trying again in \(Units.formatDuration(renewWaitNs))")
        }
        renewAtNs = Clock.monotonicNs() + renewWaitNs
        return gaveUp.load(ordering: .acquiring)
    }

    /// Connects (at prepare; `renewing` after the client gave up on a connection).
    func connect(renewing: Bool = false) throws {
        let logger = context.logger
        let urls = options.endpoint.urlList
        let flag = connected
        let closing = closing
        let gaveUp = gaveUp
        // This connection's events only, until it is retired.
        let retired = ManagedAtomic<Bool>(false)
        retiredFlag = retired
        let (connection, isConnected) = try NATSConnection.connect(options.endpoint, name: "pipelined \(context.node.name) \(context.id)") { event in
            guard !retired.load(ordering: .acquiring) else { return }
            switch event {
            case .connected(let url), .reconnected(let url):
                flag.store(true, ordering: .releasing)
                guard !closing.load(ordering: .acquiring) else { return }
                logger.info("\(event == .connected(url: url) ? "connected" : "reconnected") to \(url ?? urls)")
            case .disconnected:
                flag.store(false, ordering: .releasing)
                guard !closing.load(ordering: .acquiring) else { return }
                logger.warning("disconnected from the nats server; reconnecting (unacknowledged messages come again)")
            case .closed:
                flag.store(false, ordering: .releasing)
            case .gaveUp(let reason):
                flag.store(false, ordering: .releasing)
                guard !closing.load(ordering: .acquiring) else { return }
                logger.error("the nats client gave up on the connection (\(reason)); making a new one (unacknowledged messages come again)")
                gaveUp.store(true, ordering: .releasing)
            case .error(let text):
                logger.warning("nats client: \(text)")
            }
        }
        self.connection = connection
        jetStream = try connection.jetStream()
        connected.store(isConnected, ordering: .releasing)
        if isConnected {
            if renewing {
                logger.notice("made a new connection to \(connection.connectedURL ?? urls)")
            } else {
                logger.info("connected to \(connection.connectedURL ?? urls)")
            }
        } else if renewing {
            logger.warning("made a new connection; no server answers yet (\(connection.lastError)), retrying every \(Units.formatDuration(NATSConnection.reconnectWaitMs * 1_000_000))")
        } else {
            logger.error("cannot reach \(urls) (\(connection.lastError)): retrying every \(Units.formatDuration(NATSConnection.reconnectWaitMs * 1_000_000))")
        }
    }

    /// One consumer's pull subscription.
    struct Pull {
        var name: String
        var subject: String?
        var subscription: OpaquePointer
    }

    /// At prepare, with a server connected: creates or checks the consumers
    /// now, so that a subject the stream refuses fails the start as a
    /// pipeline error. Anything else (no stream yet) is left to ``subscriptions(waitingSince:)``.
    func checkConsumersIfConnected() throws {
        guard connected.load(ordering: .acquiring) else { return }
        for (index, consumer) in consumers.enumerated() {
            do {
                try ensureConsumer(consumer.name, subject: consumer.subject, index: index)
            } catch let error as StageStartError {
                throw error
            } catch {
                return
            }
        }
    }

    /// The pull subscriptions, one per consumer, made (with the consumers) on
    /// first use once a server is connected and the stream exists; nil until
    /// then. Throws only a subject the stream refuses (a pipeline error).
    func subscriptions(waitingSince: inout Int64?) throws -> [Pull]? {
        if subscribed.count == consumers.count { return subscribed }
        guard connected.load(ordering: .acquiring), let jetStream else { return nil }
        do {
            for (index, consumer) in consumers.enumerated() where !subscribed.contains(where: { $0.name == consumer.name }) {
                try ensureConsumer(consumer.name, subject: consumer.subject, index: index)
                var subscription: OpaquePointer?
                var subOptions = jsSubOptions()
                jsSubOptions_Init(&subOptions)
                var code = jsErrCode(rawValue: 0)
                let status = options.stream.withCString { stream in
                    consumer.name.withCString { durable in
                        subOptions.Stream = stream
                        subOptions.Consumer = durable
                        return js_PullSubscribe(&subscription, jetStream, nil, durable, nil, &subOptions, &code)
                    }
                }
                try natsCheck(status, code: code, "cannot subscribe to consumer '\(consumer.name)' of stream '\(options.stream)'")
                subscribed.append(Pull(name: consumer.name, subject: consumer.subject, subscription: subscription!))
            }
            // Fetched in the order of the file, whatever order they were (re)made in.
            subscribed.sort { a, b in
                consumers.firstIndex { $0.name == a.name }! < consumers.firstIndex { $0.name == b.name }!
            }
            if waitingSince != nil { context.logger.info("stream '\(options.stream)' is there; reading") }
            waitingSince = nil
            return subscribed
        } catch let error as StageStartError {
            throw error
        } catch {
            if waitingSince == nil || "\(error)" != lastProblem {
                context.logger.warning("\(error); waiting")
                lastProblem = "\(error)"
            }
            waitingSince = waitingSince ?? Clock.monotonicNs()
            return nil
        }
    }

    /// Creates the durable consumer `name`, or brings the one there in line.
    /// `index` is the subject's place in `subjects`, for a located error.
    private func ensureConsumer(_ name: String, subject: String?, index: Int) throws {
        guard let jetStream else { return }
        var info: UnsafeMutablePointer<jsConsumerInfo>?
        var code = jsErrCode(rawValue: 0)
        let status = js_GetConsumerInfo(&info, jetStream, options.stream, name, nil, &code)
        if status == NATS_OK, let info {
            defer { jsConsumerInfo_Destroy(info) }
            let config = info.pointee.Config.pointee
            let filter = config.FilterSubject.map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }
            guard filter == subject else {
                throw ConsumerProblem(message: "consumer '\(name)' of stream '\(options.stream)' exists with the filter '\(filter ?? "(all)")', not '\(subject ?? "(all)")': name another durable")
            }
            // The acknowledgement policy cannot change on an existing consumer.
            let acksEach = config.AckPolicy == js_AckExplicit
            let floor = floors[name]!
            if acksEach, !deliveries.withLock({ floor.acksEach }) {
                context.logger.notice("consumer '\(name)' acknowledges each message (made by an older pipelined): reading it so; delete it on the server to get one acknowledgement per batch")
            }
            warnIfReadElsewhere(name, waiting: info.pointee.NumWaiting)
            let acknowledgedFloor = info.pointee.AckFloor.Stream, delivered = info.pointee.Delivered.Stream
            let unacknowledged = Int(max(0, info.pointee.NumAckPending))
            deliveries.withLock {
                floor.acksEach = acksEach
                // Taken in once: later looks (a new subscription) would see this run's own deliveries.
                if !floor.inherited, !acksEach, delivered > acknowledgedFloor, unacknowledged > 0 {
                    context.logger.info("consumer '\(name)': \(unacknowledged) message(s) delivered before were not acknowledged (stream sequences \(acknowledgedFloor + 1)-\(delivered)): reading them again from the stream; acknowledgements wait for them")
                    floor.inherit(unacknowledged, in: acknowledgedFloor + 1...delivered, holdingForNs: options.ackWaitNs * 2 + 5_000_000_000)
                }
                floor.inherited = true
            }
            if config.AckWait != options.ackWaitNs || config.MaxAckPending != Int64(options.maxAckPending) {
                try add(name, subject: subject, index: index, update: true, ackPolicy: config.AckPolicy)
            }
            return
        }
        guard status == NATS_NOT_FOUND || code == JSConsumerNotFoundErr || code == JSStreamNotFoundErr else {
            throw NATSError(status, code: code, "cannot look up consumer '\(name)'")
        }
        if code == JSStreamNotFoundErr {
            throw ConsumerProblem(message: "stream '\(options.stream)' does not exist yet")
        }
        try add(name, subject: subject, index: index, update: false, ackPolicy: js_AckAll)
        // New: nobody else reads it yet. Counted, so a reload's new source is not warned of this one.
        warnIfReadElsewhere(name, waiting: 0)
        deliveries.withLock {
            floors[name]!.acksEach = false
            floors[name]!.inherited = true
        }
    }

    /// Says so when another client reads the durable `name` already: its
    /// pull requests wait on the server (`waiting`, from the consumer's
    /// info, taken before this link fetches) and no other link of this
    /// process reads it. Two readers of one durable each acknowledge up to
    /// their own highest written message, which covers what the other holds
    /// unwritten (cumulative acknowledgements), so if one is killed what it
    /// held is not delivered again. A reader busy between fetches has none
    /// waiting and is not seen; one that was killed has none either (the
    /// server drops the requests of a closed connection). Said once per
    /// durable, and the link counts itself as a reader of it from then on.
    private func warnIfReadElsewhere(_ name: String, waiting: Int64) {
        let key = options.stream + "/" + name
        guard !countedHere.contains(key) else { return }
        countedHere.insert(key)
        let here = Self.readersHere.withLock { readers in
            defer { readers[key, default: 0] += 1 }
            return readers[key] ?? 0
        }
        guard waiting > 0, here == 0 else { return }
        context.logger.warning("consumer '\(name)' of stream '\(options.stream)' is being read by another client (\(waiting) pull request(s) waiting on the server): two readers of one durable acknowledge each other's messages (acknowledgements are cumulative), so one that is killed loses what it held; give each aggregator its own durable, or its own subjects")
    }

    private func add(_ name: String, subject: String?, index: Int, update: Bool, ackPolicy: jsAckPolicy) throws {
        guard let jetStream else { return }
        var config = jsConsumerConfig()
        jsConsumerConfig_Init(&config)
        var info: UnsafeMutablePointer<jsConsumerInfo>?
        var code = jsErrCode(rawValue: 0)
        let durable = strdup(name)
        let filter = subject.map { strdup($0) } ?? nil
        defer {
            free(durable)
            free(filter)
        }
        config.Durable = UnsafePointer(durable)
        config.FilterSubject = filter.map { UnsafePointer($0) }
        config.AckPolicy = ackPolicy
        config.DeliverPolicy = options.deliver == .all ? js_DeliverAll : js_DeliverNew
        config.AckWait = options.ackWaitNs
        config.MaxAckPending = Int64(options.maxAckPending)
        let status = update
            ? js_UpdateConsumer(&info, jetStream, options.stream, &config, nil, &code)
            : js_AddConsumer(&info, jetStream, options.stream, &config, nil, &code)
        if code == JSStreamNotFoundErr { throw ConsumerProblem(message: "stream '\(options.stream)' does not exist yet") }
        if code == JSConsumerFilterNotSubsetErr, let subject {
            throw outsideTheStream(subject, index: index, server: Self.withoutCallSite(NATSError(status, code: code, "the server says").message))
        }
        try natsCheck(status, code: code, "cannot \(update ? "update" : "create") consumer '\(name)' on stream '\(options.stream)'")
        jsConsumerInfo_Destroy(info)
        let reading = subject.map { " for \($0)" } ?? ""
        context.logger.info("\(update ? "updated" : "created") consumer '\(name)'\(reading) (deliver \(options.deliver.rawValue), ack_wait \(Units.formatDuration(options.ackWaitNs)), max_ack_pending \(options.maxAckPending))")
    }

    /// `text` without the C client's `(jsm.c:2867): ` in front of the server's words.
    static func withoutCallSite(_ text: String) -> String {
        guard let open = text.range(of: ": ("), let close = text.range(of: "): ", range: open.upperBound..<text.endIndex),
              text[open.upperBound..<close.lowerBound].contains(".c:") else { return text }
        return String(text[..<open.upperBound].dropLast()) + String(text[close.upperBound...])
    }

    /// The pipeline error for a subject the stream does not take, located at
    /// it, naming the stream's subjects when they can be read.
    private func outsideTheStream(_ subject: String, index: Int, server: String) -> StageStartError {
        var streamSubjects = ""
        if let jetStream {
            var info: UnsafeMutablePointer<jsStreamInfo>?
            var code = jsErrCode(rawValue: 0)
            if js_GetStreamInfo(&info, jetStream, options.stream, nil, &code) == NATS_OK, let info {
                defer { jsStreamInfo_Destroy(info) }
                let config = info.pointee.Config.pointee
                let names = (0..<Int(config.SubjectsLen)).compactMap { config.Subjects[$0].map { String(cString: $0) } }
                streamSubjects = " [\(names.joined(separator: ", "))]"
            }
        }
        let location = index < options.subjectLocations.count ? options.subjectLocations[index] : nil
        return StageStartError(
            stage: context.id,
            message: "source '\(context.id)': 'subjects' item '\(subject)' is not within the subjects of stream '\(options.stream)'\(streamSubjects), so no message of the stream can match it (\(server))",
            exitCode: 78, location: location)
    }

    /// Reads the messages an earlier run of `pull`'s consumer was delivered
    /// and did not acknowledge again, straight from the stream, and hands
    /// them to `emit` in batches (with their stream sequences), so that a
    /// restarted aggregator need not wait `ack_wait` for the server to
    /// deliver them again (with `max_ack_pending` of them held, it sends
    /// nothing else meanwhile). Through a consumer of its own, made for the
    /// read and deleted after it: from the range's first sequence, on the
    /// same subject filter, without acknowledgements. Their batches are
    /// written like any other; an acknowledgement of a later message covers
    /// them. `emit` takes the messages and returns the sequences of those
    /// that were records. Nothing to do, or done, returns at once; a read that fails
    /// leaves them to the server's redelivery (logged).
    func readAgain(_ pull: Pull, emit: ([(message: OpaquePointer, sequence: UInt64)]) -> [UInt64]) {
        let floor = floors[pull.name]!
        guard let range = deliveries.withLock({ floor.toReadAgain }), let jetStream else { return }
        var found = Set<UInt64>()
        do {
            var config = jsConsumerConfig()
            jsConsumerConfig_Init(&config)
            let filter = pull.subject.map { strdup($0) } ?? nil
            defer { free(filter) }
            config.FilterSubject = filter.map { UnsafePointer($0) }
            config.AckPolicy = js_AckNone
            config.DeliverPolicy = js_DeliverByStartSequence
            config.OptStartSeq = range.lowerBound
            // Removed by the server should this process die before it deletes it.
            config.InactiveThreshold = 30_000_000_000
            var info: UnsafeMutablePointer<jsConsumerInfo>?
            var code = jsErrCode(rawValue: 0)
            try natsCheck(js_AddConsumer(&info, jetStream, options.stream, &config, nil, &code), code: code,
                          "cannot make a consumer to read them again")
            let name = info.flatMap { $0.pointee.Name.map { String(cString: $0) } } ?? ""
            jsConsumerInfo_Destroy(info)
            defer {
                var code = jsErrCode(rawValue: 0)
                _ = js_DeleteConsumer(jetStream, options.stream, name, nil, &code)
            }
            var subscription: OpaquePointer?
            var subOptions = jsSubOptions()
            jsSubOptions_Init(&subOptions)
            let status = options.stream.withCString { stream in
                name.withCString { consumer in
                    subOptions.Stream = stream
                    subOptions.Consumer = consumer
                    return js_PullSubscribe(&subscription, jetStream, nil, nil, nil, &subOptions, &code)
                }
            }
            try natsCheck(status, code: code, "cannot read them again")
            defer { natsSubscription_Destroy(subscription) }
            var past = false
            while !past {
                var list = natsMsgList()
                let status = natsSubscription_Fetch(&list, subscription, Int32(options.batch), 1000, &code)
                // Nothing more in the stream up to the range's end (deleted by age or size).
                if status == NATS_TIMEOUT { break }
                try natsCheck(status, code: code, "reading them again failed")
                var batch: [(message: OpaquePointer, sequence: UInt64)] = []
                for index in 0..<Int(list.Count) {
                    guard let message = list.Msgs[index] else { continue }
                    list.Msgs[index] = nil
                    let sequence = JetStreamMessage.metadata(of: message).sequence
                    // Past the range: the consumer delivers those itself.
                    guard range.contains(sequence) else {
                        past = past || sequence > range.upperBound
                        natsMsg_Destroy(message)
                        continue
                    }
                    batch.append((message, sequence))
                    if sequence == range.upperBound { past = true }
                }
                natsMsgList_Destroy(&list)
                // What is not a record does not hold the floor: it is terminated if it comes again.
                if !batch.isEmpty { found.formUnion(emit(batch)) }
            }
            context.logger.info("consumer '\(pull.name)': read \(found.count) message(s) delivered before again from the stream")
            deliveries.withLock { floor.readAgainDone(found: found) }
        } catch {
            context.logger.warning("consumer '\(pull.name)': \(error); the messages delivered before come again within ack_wait (\(Units.formatDuration(options.ackWaitNs)))")
            deliveries.withLock { floor.readAgainDone(found: nil) }
        }
    }

    /// Whether the message at stream `sequence` that `pull`'s consumer
    /// delivered again was read again and written already (the server
    /// delivered it again before an acknowledgement covered it).
    func writtenAlready(_ sequence: UInt64, from pull: Pull) -> Bool {
        let floor = floors[pull.name]!
        return deliveries.withLock { floor.wasRewritten(sequence) }
    }

    /// Whether `sequence` was read again and is on its way to the sinks.
    func beingWrittenAgain(_ sequence: UInt64, from pull: Pull) -> Bool {
        let floor = floors[pull.name]!
        return deliveries.withLock { floor.isBeingRewritten(sequence) }
    }

    /// A fetch failed: log it once, and start over with a new subscription
    /// when the consumer is gone (deleted, or the stream was recreated).
    func fetchFailed(_ pull: Pull, _ error: NATSError) {
        if "\(error)" != lastProblem {
            context.logger.warning("\(error)")
            lastProblem = "\(error)"
        }
        if error.code == Int(JSConsumerNotFoundErr.rawValue) || error.status == NATS_NOT_FOUND || error.status == NATS_INVALID_SUBSCRIPTION {
            retired.append(pull.subscription)
            subscribed.removeAll { $0.name == pull.name }
        }
    }

    struct ConsumerProblem: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }
}
