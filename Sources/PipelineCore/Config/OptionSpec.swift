/// The documented shape of one stage option: what `pipelined plugins` prints
/// and what the loader checks unknown keys against.
public struct OptionSpec: Sendable, Equatable {
    public var name: String
    /// The value's type as users read it: `string`, `bool`, `int`, `size`,
    /// `duration`, `[string]`, `map`, `drop|disconnect`, ...
    public var type: String
    /// The default as it would be written in a file, or nil when required or unset.
    public var defaultValue: String?
    public var required: Bool
    public var summary: String

    public init(_ name: String, _ type: String, default defaultValue: String? = nil, required: Bool = false, _ summary: String) {
        self.name = name
        self.type = type
        self.defaultValue = defaultValue
        self.required = required
        self.summary = summary
    }
}
