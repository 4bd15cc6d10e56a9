import PipelineCore

/// The `event_id` filter: keeps events by name or id.
///
/// `include` keeps only the listed events; `exclude` removes the listed ones;
/// both together keep what is included and not excluded. The name `lost` in
/// `exclude` removes `lost` records, which otherwise always pass.
public struct EventIDFilter: ConditionFilter {
    public static let descriptor = StageDescriptor.filter(
        type: "event_id", summary: "keep events by name or id (include / exclude)",
        options: EventIDFilterOptions.self, make: EventIDFilter.init)

    /// The options the filter was made with.
    public let options: EventIDFilterOptions
    /// Pass/drop by event id: a dense table indexed by id.
    private let keep: [Bool]
    private let keepLost: Bool

    public init(_ options: EventIDFilterOptions) {
        self.options = options
        var keep = [Bool](repeating: options.include == nil, count: 512)
        for id in options.include ?? [] where id < 512 { keep[Int(id)] = true }
        for id in options.exclude where id < 512 { keep[Int(id)] = false }
        self.keep = keep
        keepLost = options.keepLost
    }

    @inlinable
    public func includes(_ record: PipelineRecord) -> Bool {
        switch record {
        case .event(let event): event.eventID < 512 && passes(id: event.eventID)
        case .lost: keepsLost
        }
    }

    @usableFromInline func passes(id: UInt32) -> Bool { keep[Int(id)] }

    /// The events of the catalog that pass (exact: an id outside the
    /// catalog is no event a source makes).
    public var keeps: KeepCondition {
        if options.include == nil, options.exclude.isEmpty { return .everything }
        let ids = (options.include ?? Set(EventCatalog.all.map(\.id))).subtracting(options.exclude).filter { $0 < 512 }
        return KeepCondition([KeepClause(events: ids)])
    }
    @usableFromInline var keepsLost: Bool { keepLost }
}
