/// One stage's options as written in the pipeline file, with typed accessors
/// that record a ``Diagnostic`` (file, line, column, stage id, key) for every
/// problem instead of stopping at the first.
///
/// A stage's options struct reads each key it knows through these accessors;
/// the loader then calls ``finish()``, which reports keys nobody declared.
/// Accessors return nil both for an absent key and for a bad value (already
/// reported), so an options initializer falls back to its default and goes on.
public final class StageConfig {
    public let id: String
    public let kind: StageKind
    public let type: String
    /// The location of the stage's id key, for errors about the stage as a whole.
    public let location: SourceLocation
    /// The declared options, for unknown-key checks and `did you mean`.
    public let specs: [OptionSpec]
    /// The entries of the stage's mapping except `type` and `inputs`.
    public let entries: [ConfigEntry]
    public private(set) var diagnostics: [Diagnostic] = []

    public init(id: String, kind: StageKind, type: String, location: SourceLocation, specs: [OptionSpec], entries: [ConfigEntry]) {
        self.id = id
        self.kind = kind
        self.type = type
        self.location = location
        self.specs = specs
        self.entries = entries
    }

    /// `sink 'log'`: how messages name the stage.
    public var label: String { "\(kind.rawValue) '\(id)'" }

    /// The raw value of `key`, if present.
    public func value(_ key: String) -> ConfigValue? {
        entries.first { $0.key == key }?.value
    }

    /// True when the file sets `key`.
    public func has(_ key: String) -> Bool { value(key) != nil }

    // MARK: Reporting

    /// Reports a problem with `key` (at its value) or with the stage (at its id).
    public func error(_ key: String?, _ message: String) {
        let at = key.flatMap { value($0)?.location } ?? location
        if let key {
            diagnostics.append(Diagnostic(at, "\(label): '\(key)' \(message)"))
        } else {
            diagnostics.append(Diagnostic(at, "\(label): \(message)"))
        }
    }

    /// Reports a problem at an explicit location (an element of a list).
    public func error(at location: SourceLocation, _ message: String) {
        diagnostics.append(Diagnostic(location, "\(label): \(message)"))
    }

    /// Reports `key` as missing when it is required and absent.
    public func require(_ key: String) {
        if !has(key) { error(nil, "missing required option '\(key)'") }
    }

    /// Reports every key not among ``specs``, with a suggestion. Called by the loader.
    public func finish() {
        let known = specs.map(\.name)
        for entry in entries where !known.contains(entry.key) {
            var message = "\(label): unknown key '\(entry.key)'"
            if let suggestion = closestMatch(to: entry.key, in: known) {
                message += " (did you mean '\(suggestion)'?)"
            }
            diagnostics.append(Diagnostic(entry.keyLocation, message))
        }
    }

    // MARK: Typed accessors

    private func scalar(_ key: String, expected: String) -> (String, Bool, SourceLocation)? {
        guard let value = value(key) else { return nil }
        guard case .scalar(let text, let quoted, let at) = value else {
            error(key, "must be \(expected), not \(value.kindDescription)")
            return nil
        }
        return (text, quoted, at)
    }

    /// A string.
    public func string(_ key: String) -> String? {
        scalar(key, expected: "a string")?.0
    }

    /// A boolean (`true`/`false`, `yes`/`no`, `on`/`off`).
    public func bool(_ key: String) -> Bool? {
        guard let (text, _, _) = scalar(key, expected: "true or false") else { return nil }
        switch text.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default:
            error(key, "must be true or false, not '\(text)'")
            return nil
        }
    }

    /// An integer within `range`.
    public func int(_ key: String, in range: ClosedRange<Int>? = nil) -> Int? {
        guard let (text, _, _) = scalar(key, expected: "an integer") else { return nil }
        guard let number = Int(text) else {
            error(key, "must be an integer, not '\(text)'")
            return nil
        }
        return checked(key, number, range, text: text)
    }

    /// A floating-point number within `range`.
    public func double(_ key: String, in range: ClosedRange<Double>? = nil) -> Double? {
        guard let (text, _, _) = scalar(key, expected: "a number") else { return nil }
        guard let number = Double(text), number.isFinite else {
            error(key, "must be a number, not '\(text)'")
            return nil
        }
        if let range, !range.contains(number) {
            error(key, "must be between \(range.lowerBound) and \(range.upperBound), not \(text)")
            return nil
        }
        return number
    }

    /// A size in bytes (`64MiB`, `512KiB`, `4096`) within `range`.
    public func size(_ key: String, in range: ClosedRange<Int>? = nil) -> Int? {
        guard let (text, _, _) = scalar(key, expected: "a size") else { return nil }
        guard let bytes = Units.parseSize(text) else {
            error(key, "must be a size such as 4096, 512KiB or 64MiB, not '\(text)'")
            return nil
        }
        if let range, !range.contains(bytes) {
            if range.upperBound == Int.max {
                error(key, "must be at least \(Units.formatSize(range.lowerBound)), not \(text)")
            } else {
                error(key, "must be between \(Units.formatSize(range.lowerBound)) and \(Units.formatSize(range.upperBound)), not \(text)")
            }
            return nil
        }
        return bytes
    }

    /// A duration in nanoseconds (`500ms`, `10s`, `5m`, `1h`), at least `minimum`.
    public func duration(_ key: String, minimumNs: Int64 = 1) -> Int64? {
        guard let (text, _, _) = scalar(key, expected: "a duration") else { return nil }
        guard let ns = Units.parseDurationNs(text) else {
            error(key, "must be a duration such as 500ms, 10s, 5m or 1h, not '\(text)'")
            return nil
        }
        if ns < minimumNs {
            error(key, "must be at least \(Units.formatDuration(minimumNs)), not \(text)")
            return nil
        }
        return ns
    }

    /// One of `choices`.
    public func choice(_ key: String, _ choices: [String]) -> String? {
        guard let (text, _, _) = scalar(key, expected: "one of \(choices.joined(separator: ", "))") else { return nil }
        guard choices.contains(text) else {
            var message = "must be one of \(choices.joined(separator: ", ")), not '\(text)'"
            if let suggestion = closestMatch(to: text, in: choices) { message += " (did you mean '\(suggestion)'?)" }
            error(key, message)
            return nil
        }
        return text
    }

    /// A list of scalars, each with its location. Anything but a list (a lone
    /// scalar included) is reported, with the fix (``ConfigValue/notAListMessage``).
    public func scalarList(_ key: String) -> [(text: String, location: SourceLocation)]? {
        guard let value = value(key) else { return nil }
        guard case .sequence(let items, _) = value else {
            error(key, value.notAListMessage ?? "must be a list")
            return nil
        }
        var result: [(String, SourceLocation)] = []
        for item in items {
            guard case .scalar(let text, _, let at) = item else {
                error(at: item.location, "'\(key)' items must be scalars, not \(item.kindDescription)")
                continue
            }
            result.append((text, at))
        }
        return result
    }

    /// A list of strings.
    public func stringList(_ key: String) -> [String]? {
        scalarList(key)?.map(\.text)
    }

    /// A list of integers within `range`.
    public func intList(_ key: String, in range: ClosedRange<Int>? = nil) -> [Int]? {
        guard let items = scalarList(key) else { return nil }
        var result: [Int] = []
        for item in items {
            guard let number = Int(item.text) else {
                error(at: item.location, "'\(key)' items must be integers, not '\(item.text)'")
                continue
            }
            if let range, !range.contains(number) {
                error(at: item.location, "'\(key)' items must be between \(range.lowerBound) and \(range.upperBound), not \(number)")
                continue
            }
            result.append(number)
        }
        return result
    }

    /// A map from names to scalars (for example `visibility: {network: false}`).
    public func scalarMap(_ key: String) -> [(key: String, keyLocation: SourceLocation, text: String, location: SourceLocation)]? {
        guard let value = value(key) else { return nil }
        guard case .mapping(let entries, _) = value else {
            error(key, "must be a map, not \(value.kindDescription)")
            return nil
        }
        var result: [(String, SourceLocation, String, SourceLocation)] = []
        for entry in entries {
            guard case .scalar(let text, _, let at) = entry.value else {
                error(at: entry.value.location, "'\(key).\(entry.key)' must be a scalar, not \(entry.value.kindDescription)")
                continue
            }
            result.append((entry.key, entry.keyLocation, text, at))
        }
        return result
    }

    private func checked(_ key: String, _ number: Int, _ range: ClosedRange<Int>?, text: String) -> Int? {
        if let range, !range.contains(number) {
            error(key, "must be between \(range.lowerBound) and \(range.upperBound), not \(text)")
            return nil
        }
        return number
    }
}
