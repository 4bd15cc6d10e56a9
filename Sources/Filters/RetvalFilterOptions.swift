import PipelineCore

/// Options of the `retval` filter; every one given must hold.
public struct RetvalFilterOptions: StageOptions, Equatable {
    /// True keeps `retval >= 0`, false keeps failures.
    public var success: Bool?
    /// Values kept (one of these); nil when unset.
    public var equals: Set<Int64>?
    /// Values removed.
    public var notEquals: Set<Int64>
    public var min: Int64?
    public var max: Int64?
    /// Failures kept by errno number (`ECONNREFUSED` is 111: retval -111); nil when unset.
    public var errno: Set<Int32>?
    /// Whether `lost` records pass (`lost: pass`).
    public var keepLost: Bool

    public init(
        success: Bool? = nil, equals: Set<Int64>? = nil, notEquals: Set<Int64> = [],
        min: Int64? = nil, max: Int64? = nil, errno: Set<Int32>? = nil, keepLost: Bool = true
    ) {
        self.success = success
        self.equals = equals
        self.notEquals = notEquals
        self.min = min
        self.max = max
        self.errno = errno
        self.keepLost = keepLost
    }

    public static let specs: [OptionSpec] = [
        OptionSpec("success", "bool", "true keeps retval >= 0, false keeps failures (retval < 0)"),
        OptionSpec("equals", "[int]", "keep events whose retval is one of these"),
        OptionSpec("not_equals", "[int]", "drop events whose retval is one of these"),
        OptionSpec("min", "int", "keep events whose retval is at least this"),
        OptionSpec("max", "int", "keep events whose retval is at most this"),
        OptionSpec("errno", "[name]", "keep failures with one of these errno names (ECONNREFUSED, ENOENT, ...)"),
        LostPolicy.option,
    ]

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
}
