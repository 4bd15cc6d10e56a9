import PipelineCore

/// The `retval` filter: keeps events by their return value.
///
/// Every option given must hold (they are ANDed): `success: false` with
/// `errno: [ECONNREFUSED]` keeps refused connections only. `equals` and
/// `errno` are alternatives within themselves (the value is one of the
/// listed), `not_equals` excludes each listed value, `min`/`max` bound the
/// value inclusively. `lost` records pass unless `lost: drop`.
public struct RetvalFilter: EventFilter {
    public static let descriptor = StageDescriptor.filter(
        type: "retval",
        summary: "keep events by return value: success, exact values, ranges, errno names",
        options: [
            OptionSpec("success", "bool", "true keeps retval >= 0, false keeps failures (retval < 0)"),
            OptionSpec("equals", "[int]", "keep events whose retval is one of these"),
            OptionSpec("not_equals", "[int]", "drop events whose retval is one of these"),
            OptionSpec("min", "int", "keep events whose retval is at least this"),
            OptionSpec("max", "int", "keep events whose retval is at most this"),
            OptionSpec("errno", "[name]", "keep failures with one of these errno names (ECONNREFUSED, ENOENT, ...)"),
            LostPolicy.option,
        ],
        make: { config in RetvalFilter(config) }
    )

    public let success: Bool?
    /// Values kept (from `equals` and `errno`, each list an alternative); nil when unset.
    public let equals: Set<Int64>?
    public let errnoValues: Set<Int64>?
    public let notEquals: Set<Int64>
    public let min: Int64?
    public let max: Int64?
    public let keepLost: Bool

    public init(
        success: Bool? = nil, equals: Set<Int64>? = nil, notEquals: Set<Int64> = [],
        min: Int64? = nil, max: Int64? = nil, errno: Set<Int32>? = nil, keepLost: Bool = true
    ) {
        self.success = success
        self.equals = equals
        self.errnoValues = errno.map { Set($0.map { -Int64($0) }) }
        self.notEquals = notEquals
        self.min = min
        self.max = max
        self.keepLost = keepLost
    }

    /// Reads the options; nil when the config reported a problem.
    public init?(_ config: StageConfig) {
        let errors = config.diagnostics.count
        let success = config.bool("success")
        let equals = config.intList("equals").map { Set($0.map(Int64.init)) }
        let notEquals = config.intList("not_equals").map { Set($0.map(Int64.init)) } ?? []
        let min = config.int("min").map(Int64.init)
        let max = config.int("max").map(Int64.init)
        var errnos: Set<Int32>?
        if let items = config.scalarList("errno") {
            errnos = []
            for item in items {
                if let number = Errno.number(named: item.text.uppercased()) {
                    errnos?.insert(number)
                } else {
                    var message = "'errno': unknown errno name '\(item.text)'"
                    if let suggestion = closestMatch(to: item.text.uppercased(), in: Errno.allNames) {
                        message += " (did you mean '\(suggestion)'?)"
                    }
                    config.error(at: item.location, message)
                }
            }
        }
        if let min, let max, min > max {
            config.error("min", "(\(min)) is greater than 'max' (\(max)): no event could pass")
        }
        if success == true, errnos != nil {
            config.error("errno", "cannot be combined with 'success: true': an errno is a failure")
        }
        let keepLost = LostPolicy.passes(config)
        guard config.diagnostics.count == errors else { return nil }
        self.init(success: success, equals: equals, notEquals: notEquals, min: min, max: max, errno: errnos, keepLost: keepLost)
    }

    public func includes(_ record: PipelineRecord) -> Bool {
        switch record {
        case .lost:
            return keepLost
        case .event(let event):
            return passes(event.retval)
        }
    }

    /// The test on one return value.
    @inlinable public func passes(_ retval: Int64) -> Bool {
        if let success, success != (retval >= 0) { return false }
        if let min, retval < min { return false }
        if let max, retval > max { return false }
        if !notEquals.isEmpty, notEquals.contains(retval) { return false }
        if let equals, !equals.contains(retval) { return false }
        if let errnoValues, !errnoValues.contains(retval) { return false }
        return true
    }
}
