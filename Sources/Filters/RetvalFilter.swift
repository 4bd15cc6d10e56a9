import PipelineCore

/// The `retval` filter: keeps events by their return value.
///
/// Every option given must hold (they are ANDed): `success: false` with
/// `errno: [ECONNREFUSED]` keeps refused connections only. `equals` and
/// `errno` are alternatives within themselves (the value is one of the
/// listed), `not_equals` excludes each listed value, `min`/`max` bound the
/// value inclusively. `lost` records pass unless `lost: drop`.
public struct RetvalFilter: ConditionFilter {
    public static let descriptor = StageDescriptor.filter(
        type: "retval", summary: "keep events by return value: success, exact values, ranges, errno names",
        options: RetvalFilterOptions.self, make: RetvalFilter.init)

    /// The options the filter was made with.
    public let options: RetvalFilterOptions
    /// The return values `errno` keeps (`-111` for ECONNREFUSED); nil when unset.
    @usableFromInline let errnoValues: Set<Int64>?

    public init(_ options: RetvalFilterOptions) {
        self.options = options
        errnoValues = options.errno.map { Set($0.map { -Int64($0) }) }
    }

    public func includes(_ record: PipelineRecord) -> Bool {
        switch record {
        case .lost:
            return options.keepLost
        case .event(let event):
            return passes(event.retval)
        }
    }

    /// The test on one return value.
    @inlinable public func passes(_ retval: Int64) -> Bool {
        if let success = options.success, success != (retval >= 0) { return false }
        if let min = options.min, retval < min { return false }
        if let max = options.max, retval > max { return false }
        if !options.notEquals.isEmpty, options.notEquals.contains(retval) { return false }
        if let equals = options.equals, !equals.contains(retval) { return false }
        if let errnoValues, !errnoValues.contains(retval) { return false }
        return true
    }

    /// Exactly ``passes(_:)``, as one clause.
    public var keeps: KeepCondition {
        var clause = KeepClause(retvalMin: options.min, retvalMax: options.max, retvalIn: options.equals, retvalNotIn: options.notEquals)
        switch options.success {
        case true?: clause = clause.intersection(KeepClause(retvalMin: 0))
        case false?: clause = clause.intersection(KeepClause(retvalMax: -1))
        case nil: break
        }
        if let errnoValues { clause = clause.intersection(KeepClause(retvalIn: errnoValues)) }
        return KeepCondition([clause])
    }
}
