/// The bounded queue in front of one sink. Any number of producers (source
/// threads) push; the sink's thread pops. Capacity is counted in records.
///
/// When full, a push either waits (``QueuePolicy/WhenFull/block``) or drops
/// the batch and adds its size to a loss count (``QueuePolicy/WhenFull/drop``).
/// The consumer turns that count into a `lost` record (`where: queue`) ahead
/// of the next batch it pops, so every event is delivered or counted.
public final class SinkQueue: Sendable {
    public let policy: QueuePolicy
    private let lock = ConditionLock()
    // Guarded by `lock`.
    private nonisolated(unsafe) var batches: [EventBatch] = []
    private nonisolated(unsafe) var head = 0
    private nonisolated(unsafe) var queued = 0
    private nonisolated(unsafe) var dropped: UInt64 = 0
    private nonisolated(unsafe) var closed = false
    /// The stage's `lost` counter at `where: queue`.
    private let queueLoss: StageMetrics.Counter

    public init(policy: QueuePolicy, metrics: StageMetrics) {
        self.policy = policy
        queueLoss = metrics.loss(.queue)
    }

    /// Adds a batch, waiting for room or dropping it as the policy says.
    /// After ``close()`` a push is dropped and counted.
    public func push(_ batch: EventBatch) {
        guard !batch.isEmpty else { return }
        let size = batch.count
        lock.withLock {
            // A batch larger than the whole queue is still admitted into an
            // empty queue, so that block can never wait forever.
            while !closed, queued > 0, queued + size > policy.capacityEvents {
                if policy.whenFull == .drop {
                    let lost = batch.lossWeight
                    dropped += lost
                    queueLoss.add(lost)
                    return
                }
                lock.wait()
            }
            if closed {
                // Counted like any drop, so that the stage's lost counter
                // equals the `lost` records the consumer still hands on.
                let lost = batch.lossWeight
                dropped += lost
                queueLoss.add(lost)
                return
            }
            batches.append(batch)
            queued += size
            lock.broadcast()
        }
    }

    /// What ``pop(untilMonotonicNs:)`` returns.
    public enum Pop: Sendable {
        case batch(EventBatch)
        /// Nothing arrived before the deadline.
        case timedOut
        /// Closed and empty: the sink may close.
        case finished
    }

    /// Takes the oldest batch, waiting until the deadline. A pending loss count
    /// comes first, as a batch holding one `lost` record.
    public func pop(untilMonotonicNs deadline: Int64) -> Pop {
        lock.withLock {
            while true {
                if dropped > 0 {
                    let lost = LostRecord(timeNs: Clock.wallNs(), count: dropped, site: .queue)
                    dropped = 0
                    return .batch(EventBatch([.lost(lost)]))
                }
                if head < batches.count {
                    let batch = batches[head]
                    batches[head] = EventBatch()
                    head += 1
                    if head >= 64, head * 2 >= batches.count {
                        batches.removeFirst(head)
                        head = 0
                    }
                    queued -= batch.count
                    lock.broadcast()
                    return .batch(batch)
                }
                if closed { return .finished }
                if !lock.wait(untilMonotonicNs: deadline), Clock.monotonicNs() >= deadline {
                    return .timedOut
                }
            }
        }
    }

    /// No more pushes will come: the consumer drains what is left, then finishes.
    public func close() {
        lock.withLock {
            closed = true
            lock.broadcast()
        }
    }

    /// Records waiting.
    public var depth: Int { lock.withLock { queued } }
}
