import Atomics

/// Tells the source that made a batch when the pipeline is done with it:
/// every sink queue the batch reached has had it written, or has counted it
/// as lost. A source that must not let go of its input before then (a
/// broker's message it acknowledges only once it is stored downstream)
/// attaches one to the batch it emits (``EventBatch/completion``).
///
/// How the pieces hold it, each hold released exactly once:
/// - the source holds it from ``init(_:)`` until ``SourceOutput/emit(_:)``
///   has pushed the batch along every route (so a batch that every filter
///   emptied, or that reached no sink, completes when `emit` returns);
/// - each sink queue that takes the batch (or a filtered copy of it) holds
///   it until the sink's ``EventSink/write(_:)`` has returned, or the batch
///   was dropped (a full dropping queue, a closed queue, a failed sink:
///   `written` false);
/// - a sink that keeps records in memory after `write` returns (a block
///   being filled) calls ``hold()`` in `write` and ``release(written:)`` once
///   they are on their way to storage.
///
/// When the last hold is released, `done` is called once, on that thread,
/// with `true` if every hold ended written and `false` if any ended lost. It
/// must be quick and must not block: it runs on a sink's thread. A batch
/// still in a queue when the drain timeout gives up never completes.
public final class BatchCompletion: Sendable {
    private let holds = ManagedAtomic<Int>(1)
    private let anyLost = ManagedAtomic<Bool>(false)
    // Written once here, called and cleared once by the thread whose
    // release takes `holds` to zero (the decrement orders it after every
    // other release), so it is never touched by two threads at once.
    private nonisolated(unsafe) var done: (@Sendable (_ written: Bool) -> Void)?

    /// A completion held once, by the source that creates it.
    public init(_ done: @escaping @Sendable (_ written: Bool) -> Void) {
        self.done = done
    }

    /// Takes one more hold: the batch is kept somewhere that will release it.
    public func hold() {
        holds.wrappingIncrement(ordering: .relaxed)
    }

    /// Gives back one hold; `written` false when the batch (or this
    /// holder's copy) was lost. The last release calls `done`.
    public func release(written: Bool) {
        if !written { anyLost.store(true, ordering: .relaxed) }
        guard holds.wrappingDecrementThenLoad(ordering: .acquiringAndReleasing) == 0 else { return }
        let done = self.done
        self.done = nil
        done?(!anyLost.load(ordering: .relaxed))
    }
}
