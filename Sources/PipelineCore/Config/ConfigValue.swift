/// A YAML value from a pipeline file, after `${VAR}` substitution, with the
/// location of every node so that any error can point at it.
public indirect enum ConfigValue: Sendable, Equatable {
    /// A scalar as written; `quoted` when it was a quoted string (so `"10"` is
    /// a string and `10` may be a number).
    case scalar(String, quoted: Bool, at: SourceLocation)
    case sequence([ConfigValue], at: SourceLocation)
    case mapping([ConfigEntry], at: SourceLocation)

    /// Where the value starts.
    public var location: SourceLocation {
        switch self {
        case .scalar(_, _, let at), .sequence(_, let at), .mapping(_, let at): at
        }
    }

    /// A word for error messages: "a string", "a list", "a map".
    public var kindDescription: String {
        switch self {
        case .scalar: "a scalar"
        case .sequence: "a list"
        case .mapping: "a map"
        }
    }

    /// The scalar's text, or nil for a list or map.
    public var scalarText: String? {
        if case .scalar(let text, _, _) = self { return text }
        return nil
    }

    /// Why this value cannot stand where a list is wanted, or nil for a list:
    /// `must be a list (write [connect])` for a lone scalar, so that
    /// `events: connect` is an error with its fix rather than a silent list
    /// of one. Every list option and `inputs` report through this.
    public var notAListMessage: String? {
        switch self {
        case .sequence: nil
        case .scalar(let text, _, _): text.isEmpty ? "must be a list" : "must be a list (write [\(text)])"
        case .mapping: "must be a list, not a map"
        }
    }

    /// The value of `key` in a mapping.
    public subscript(key: String) -> ConfigValue? {
        guard case .mapping(let entries, _) = self else { return nil }
        return entries.first { $0.key == key }?.value
    }
}

/// One `key: value` of a mapping, with the key's own location.
public struct ConfigEntry: Sendable, Equatable {
    public var key: String
    public var keyLocation: SourceLocation
    public var value: ConfigValue

    public init(key: String, keyLocation: SourceLocation, value: ConfigValue) {
        self.key = key
        self.keyLocation = keyLocation
        self.value = value
    }
}

extension ConfigValue {
    /// The value as written, without where it was written and with map keys
    /// in order: what a reload compares to tell a changed stage from an
    /// unchanged one (moving a stage within the file, or reordering its
    /// keys, changes nothing).
    public var comparable: ConfigValue {
        let nowhere = SourceLocation(file: "", line: 0, column: 0)
        switch self {
        case .scalar(let text, let quoted, _):
            return .scalar(text, quoted: quoted, at: nowhere)
        case .sequence(let items, _):
            return .sequence(items.map(\.comparable), at: nowhere)
        case .mapping(let entries, _):
            let sorted = entries.map { ConfigEntry(key: $0.key, keyLocation: nowhere, value: $0.value.comparable) }
                .sorted { $0.key < $1.key }
            return .mapping(sorted, at: nowhere)
        }
    }
}
