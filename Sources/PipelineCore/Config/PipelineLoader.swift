/// Turns a pipeline file (docs/pipeline-file.md) into a checked ``PipelinePlan``.
///
/// The loader knows the file's shape (sections, `type`, `inputs`, `settings`)
/// and the graph rules; each stage type checks its own options through the
/// ``StageConfig`` its descriptor receives. Every problem found is reported,
/// not just the first: a file with three mistakes gets three diagnostics,
/// sorted by position, each `FILE:LINE:COLUMN: error: ...`.
///
/// Loading has no side effects: factories only decode options, so `validate`
/// and `run` check exactly the same things before anything starts.
public struct PipelineLoader: Sendable {
    /// The stage types a file may name.
    public var registry: StageRegistry
    /// Values for `${VAR}` and `${VAR:-default}`.
    public var environment: [String: String]

    public init(registry: StageRegistry, environment: [String: String]) {
        self.registry = registry
        self.environment = environment
    }

    /// Loads the file at `path`; the diagnostics name it as written.
    public func load(path: String) throws(PipelineFileError) -> PipelinePlan {
        try load(text: Self.readText(path), file: path)
    }

    /// A pipeline file's text: at most 16 MiB of UTF-8, or one diagnostic
    /// at its first line that says why not.
    static func readText(_ path: String) throws(PipelineFileError) -> String {
        func problem(_ message: String) -> PipelineFileError {
            PipelineFileError([Diagnostic(SourceLocation(file: path, line: 1, column: 1), message)])
        }
        let limit = 16 << 20
        let bytes: [UInt8]
        do throws(SystemError) {
            bytes = try FileIO.readAll(path, limit: limit + 1)
        } catch {
            throw problem(error.message)
        }
        if bytes.count > limit { throw problem("the file is larger than 16 MiB; is it a pipeline file?") }
        guard let text = String(validating: bytes, as: UTF8.self) else { throw problem("the file is not valid UTF-8") }
        return text
    }

    /// Loads pipeline text; `file` is the name diagnostics carry.
    public func load(text: String, file: String) throws(PipelineFileError) -> PipelinePlan {
        var session = LoadSession(file: file, registry: registry, environment: environment)
        let plan = session.load(text)
        let diagnostics = Array(Set(session.diagnostics)).sorted {
            ($0.location, $0.message) < ($1.location, $1.message)
        }
        guard diagnostics.isEmpty, let plan else {
            throw PipelineFileError(diagnostics.isEmpty
                ? [Diagnostic(SourceLocation(file: file, line: 1, column: 1), "the pipeline could not be built")]
                : diagnostics)
        }
        return plan
    }
}

/// Stage ids appear in file names (archive segments) and log labels, so they
/// are kept to a portable alphabet.
private func isValidStageID(_ id: String) -> Bool {
    guard let first = id.utf8.first, first != UInt8(ascii: "-"), first != UInt8(ascii: "."), id.utf8.count <= 64 else {
        return false
    }
    return id.utf8.allSatisfy { byte in
        (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
            || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-") || byte == UInt8(ascii: ".")
    }
}

/// The state of one load: the diagnostics found so far. The file's shape
/// is read here; YAML to values is in `PipelineYAML.swift`, the graph rules
/// in `PipelineGraph.swift`.
struct LoadSession {
    let file: String
    let registry: StageRegistry
    let environment: [String: String]
    var diagnostics: [Diagnostic] = []
    /// The position just after the text being loaded (see ``location(_:)``).
    var textEnd = (line: Int.max, column: Int.max)

    init(file: String, registry: StageRegistry, environment: [String: String]) {
        self.file = file
        self.registry = registry
        self.environment = environment
    }

    static let topLevelKeys = ["name", "settings", "sources", "filters", "sinks"]

    mutating func error(_ at: SourceLocation, _ message: String) {
        diagnostics.append(Diagnostic(at, message))
    }

    var start: SourceLocation { SourceLocation(file: file, line: 1, column: 1) }

    // MARK: The file's shape

    mutating func build(_ entries: [ConfigEntry], at: SourceLocation) -> PipelinePlan? {
        var name = file.lastPathComponent
        var settings = PipelineSettings()
        var sections: [StageKind: (entries: [ConfigEntry], at: SourceLocation)] = [:]

        for entry in entries {
            switch entry.key {
            case "name":
                if case .scalar(let text, _, _) = entry.value, !text.isEmpty {
                    name = text
                } else {
                    error(entry.value.location, "'name' must be a non-empty string")
                }
            case "settings":
                settings = readSettings(entry.value)
            case "sources", "filters", "sinks":
                let kind: StageKind = entry.key == "sources" ? .source : entry.key == "filters" ? .filter : .sink
                switch entry.value {
                case .mapping(let stages, let mapAt):
                    sections[kind] = (stages, mapAt)
                case .scalar(let text, _, let valueAt) where text.isEmpty || text == "null" || text == "~":
                    sections[kind] = ([], valueAt)
                default:
                    error(entry.value.location, "'\(entry.key)' must be a map from stage id to stage, not \(entry.value.kindDescription)")
                    sections[kind] = ([], entry.value.location)
                }
            default:
                var message = "unknown top-level key '\(entry.key)'"
                if let suggestion = closestMatch(to: entry.key, in: Self.topLevelKeys) {
                    message += " (did you mean '\(suggestion)'?)"
                } else {
                    message += " (expected one of: \(Self.topLevelKeys.joined(separator: ", ")))"
                }
                error(entry.keyLocation, message)
            }
        }

        if sections[.source]?.entries.isEmpty ?? true {
            error(sections[.source]?.at ?? at, "the pipeline has no source: add one under 'sources'")
        }
        if sections[.sink]?.entries.isEmpty ?? true {
            error(sections[.sink]?.at ?? at, "the pipeline has no sink: add one under 'sinks'")
        }

        var stages: [ParsedStage] = []
        var seen: [String: ParsedStage] = [:]
        // Inputs of stages rejected as duplicates still count as readers, so
        // that one mistake does not also report its inputs as unread.
        var readByDuplicates: Set<String> = []
        for kind in [StageKind.source, .filter, .sink] {
            for entry in sections[kind]?.entries ?? [] {
                guard let stage = readStage(entry, kind: kind) else { continue }
                if let earlier = seen[stage.id] {
                    error(entry.keyLocation, "\(kind.rawValue) '\(stage.id)': the id is already used by the \(earlier.kind.rawValue) at line \(earlier.idLocation.line)")
                    readByDuplicates.formUnion(stage.inputs.map(\.id))
                    continue
                }
                seen[stage.id] = stage
                stages.append(stage)
            }
        }
        checkGraph(stages, alsoRead: readByDuplicates)

        let planned = stages.compactMap { stage -> PlannedStage? in
            guard let instance = stage.instance else { return nil }
            return PlannedStage(id: stage.id, type: stage.type, instance: instance, inputs: stage.inputs.map(\.id), queue: stage.queue, options: stage.options)
        }
        guard planned.count == stages.count else { return nil }
        return PipelinePlan(name: name, settings: settings, stages: planned)
    }

    mutating func readSettings(_ value: ConfigValue) -> PipelineSettings {
        var settings = PipelineSettings()
        guard case .mapping(let entries, _) = value else {
            error(value.location, "'settings' must be a map, not \(value.kindDescription)")
            return settings
        }
        let known = PipelineSettings.options.map(\.name)
        var privilege: (drop: ConfigEntry?, user: ConfigEntry?, group: ConfigEntry?, seccomp: ConfigEntry?)
        for entry in entries {
            let text = entry.value.scalarText
            let at = entry.value.location
            switch entry.key {
            case "batch_events":
                if let text, let number = Int(text), (1...65_536).contains(number) {
                    settings.batchEvents = number
                } else {
                    error(at, "settings: 'batch_events' must be an integer between 1 and 65536, not \(text.map { "'\($0)'" } ?? entry.value.kindDescription)")
                }
            case "drain_timeout":
                if let text, let ns = Units.parseDurationNs(text), ns >= 1_000_000 {
                    settings.drainTimeoutNs = ns
                } else {
                    error(at, "settings: 'drain_timeout' must be a duration of at least 1ms such as 500ms or 30s, not \(text.map { "'\($0)'" } ?? entry.value.kindDescription)")
                }
            case "log_level":
                let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
                if let text, levels.contains(text) {
                    settings.logLevel = text
                } else {
                    error(at, "settings: 'log_level' must be one of \(levels.joined(separator: ", ")), not \(text.map { "'\($0)'" } ?? entry.value.kindDescription)")
                }
            case "priority_boost":
                if let text, let number = Int(text), (0...20).contains(number) {
                    settings.priorityBoost = number
                } else {
                    error(at, "settings: 'priority_boost' must be an integer between 0 and 20, not \(text.map { "'\($0)'" } ?? entry.value.kindDescription)")
                }
            case "node":
                if let text, !text.isEmpty, !text.utf8.contains(where: { $0 < 0x20 }) {
                    settings.node = text
                } else {
                    error(at, "settings: 'node' must be a non-empty name without control characters, not \(text.map { "'\($0)'" } ?? entry.value.kindDescription)")
                }
            case "metrics":
                readMetricsSettings(entry.value, into: &settings)
            case "pushdown":
                if let text, ["true", "yes", "on", "false", "no", "off"].contains(text.lowercased()) {
                    settings.pushdown = ["true", "yes", "on"].contains(text.lowercased())
                } else {
                    error(at, "settings: 'pushdown' must be true or false, not \(text.map { "'\($0)'" } ?? entry.value.kindDescription)")
                }
            case "drop_privileges": privilege.drop = entry
            case "user": privilege.user = entry
            case "group": privilege.group = entry
            case "seccomp": privilege.seccomp = entry
            default:
                var message = "settings: unknown key '\(entry.key)'"
                if let suggestion = closestMatch(to: entry.key, in: known) { message += " (did you mean '\(suggestion)'?)" }
                error(entry.keyLocation, message)
            }
        }
        readPrivilegeSettings(drop: privilege.drop, user: privilege.user, group: privilege.group, seccomp: privilege.seccomp, into: &settings)
        return settings
    }

    /// `settings.metrics`: `{listen: HOST:PORT}` or `{listen: false}`.
    mutating func readMetricsSettings(_ value: ConfigValue, into settings: inout PipelineSettings) {
        guard case .mapping(let entries, _) = value else {
            error(value.location, "settings: 'metrics' must be a map such as {listen: 127.0.0.1:9464}, not \(value.kindDescription)")
            return
        }
        for entry in entries {
            guard entry.key == "listen" else {
                var message = "settings.metrics: unknown key '\(entry.key)'"
                if closestMatch(to: entry.key, in: ["listen"]) != nil { message += " (did you mean 'listen'?)" }
                error(entry.keyLocation, message)
                continue
            }
            let text = entry.value.scalarText
            if let text, ["false", "off", "no"].contains(text.lowercased()) {
                settings.metricsListen = nil
            } else if let text, let address = ListenAddress(parsing: text) {
                settings.metricsListen = address
            } else {
                error(entry.value.location, "settings.metrics: 'listen' must be HOST:PORT (such as 127.0.0.1:9464 or [::1]:9464; port 0 picks a free one) or false, not \(text.map { "'\($0)'" } ?? entry.value.kindDescription)")
            }
        }
    }

    struct InputRef {
        var id: String
        var at: SourceLocation
    }

    struct ParsedStage {
        var id: String
        var kind: StageKind
        var type: String
        var idLocation: SourceLocation
        var inputs: [InputRef]
        var inputsKeyLocation: SourceLocation?
        /// `inputs` was written but is not a list (already reported).
        var inputsInvalid = false
        /// The stage id a scalar `inputs: kernel` named.
        var namedByInvalidInputs: String?
        var queue: QueuePolicy
        /// The options as written (all but `type` and `inputs`).
        var options: ConfigValue = .mapping([], at: SourceLocation(file: "", line: 0, column: 0))
        /// Nil when the stage's options had errors (already reported).
        var instance: StageInstance?
    }

    mutating func readStage(_ entry: ConfigEntry, kind: StageKind) -> ParsedStage? {
        let id = entry.key
        let label = "\(kind.rawValue) '\(id)'"
        if !isValidStageID(id) {
            error(entry.keyLocation, "\(label): a stage id uses letters, digits, '_', '-' and '.', starts with a letter, digit or '_', and has at most 64 characters")
        }
        guard case .mapping(let fields, let at) = entry.value else {
            error(entry.value.location, "\(label): a stage must be a map with at least 'type', not \(entry.value.kindDescription)")
            return nil
        }
        var stage = ParsedStage(id: id, kind: kind, type: "", idLocation: entry.keyLocation, inputs: [], queue: QueuePolicy())

        // type
        let typeEntry = fields.first { $0.key == "type" }
        var descriptor: StageDescriptor?
        if let typeEntry {
            if case .scalar(let type, _, let typeAt) = typeEntry.value {
                stage.type = type
                if let found = registry.descriptor(for: type, kind: kind) {
                    descriptor = found
                } else if let other = registry.kinds(named: type).first {
                    error(typeAt, "\(label): '\(type)' is a \(other.rawValue) type; move it under '\(other.sectionKey)' or use a \(kind.rawValue) type (\(typeNames(kind)))")
                } else {
                    var message = "\(label): unknown type '\(type)'"
                    if let suggestion = closestMatch(to: type, in: registry.types(of: kind).map(\.type)) {
                        message += " (did you mean '\(suggestion)'?)"
                    } else {
                        message += " (\(kind.rawValue) types: \(typeNames(kind)))"
                    }
                    error(typeAt, message)
                }
            } else {
                error(typeEntry.value.location, "\(label): 'type' must be a type name, not \(typeEntry.value.kindDescription)")
            }
        } else {
            error(entry.keyLocation, "\(label): missing required key 'type' (\(kind.rawValue) types: \(typeNames(kind)))")
        }

        // inputs
        if let inputsEntry = fields.first(where: { $0.key == "inputs" }) {
            stage.inputsKeyLocation = inputsEntry.keyLocation
            if kind == .source {
                error(inputsEntry.keyLocation, "\(label): a source has no 'inputs'; it reads from outside the pipeline")
            } else {
                switch inputsEntry.value {
                case .sequence(let items, _):
                    for item in items {
                        if case .scalar(let text, _, let itemAt) = item, !text.isEmpty {
                            stage.inputs.append(InputRef(id: text, at: itemAt))
                        } else {
                            error(item.location, "\(label): each of 'inputs' must be a stage id, not \(item.kindDescription)")
                        }
                    }
                default:
                    error(inputsEntry.value.location, "\(label): 'inputs' \(inputsEntry.value.notAListMessage ?? "must be a list")")
                    // One mistake, one error: the stage it names still counts
                    // as read, and the stage is not also "without inputs".
                    stage.inputsInvalid = true
                    if let text = inputsEntry.value.scalarText, !text.isEmpty { stage.namedByInvalidInputs = text }
                }
            }
        }

        guard let descriptor else { return stage }
        let options = fields.filter { $0.key != "type" && $0.key != "inputs" }
        stage.options = .mapping(options, at: at)
        let config = StageConfig(id: id, kind: kind, type: stage.type, location: entry.keyLocation, specs: descriptor.allOptions, entries: options)
        if kind == .sink {
            let capacity = config.int("queue_events", in: 16...16_777_216) ?? QueuePolicy().capacityEvents
            let whenFull = config.choice("queue_full", ["block", "drop"]).flatMap(QueuePolicy.WhenFull.init(rawValue:)) ?? .block
            stage.queue = QueuePolicy(capacityEvents: capacity, whenFull: whenFull)
        }
        let instance = descriptor.make(config)
        config.finish()
        diagnostics += config.diagnostics
        if instance == nil, config.diagnostics.isEmpty {
            error(at, "\(label): the options of '\(stage.type)' are not valid")
        }
        stage.instance = config.diagnostics.isEmpty ? instance : nil
        return stage
    }

    func typeNames(_ kind: StageKind) -> String {
        registry.types(of: kind).map(\.type).sorted().joined(separator: ", ")
    }
}

/// `lastPathComponent` without Foundation.
private extension String {
    var lastPathComponent: String {
        let trimmed = self.hasSuffix("/") ? String(self.dropLast()) : self
        return trimmed.split(separator: "/").last.map(String.init) ?? trimmed
    }
}
