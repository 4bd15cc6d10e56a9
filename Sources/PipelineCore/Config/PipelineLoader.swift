#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Yams

/// Turns a pipeline file (SPEC section 2) into a checked ``PipelinePlan``.
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
        let text: String
        do {
            text = try readTextFile(path)
        } catch {
            throw PipelineFileError([Diagnostic(SourceLocation(file: path, line: 1, column: 1), error.description)])
        }
        return try load(text: text, file: path)
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

/// The state of one load: the diagnostics found so far.
private struct LoadSession {
    let file: String
    let registry: StageRegistry
    let environment: [String: String]
    var diagnostics: [Diagnostic] = []

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

    // MARK: YAML to ConfigValue

    mutating func load(_ text: String) -> PipelinePlan? {
        let root: Node?
        do {
            // The basic resolver: this loader reads every scalar itself, so
            // the implicit tags (found by regular expressions) are not needed.
            root = try Yams.compose(yaml: text, .basic)
        } catch let error as YamlError {
            report(error)
            return nil
        } catch {
            self.error(start, "cannot parse YAML: \(error)")
            return nil
        }
        guard let root else {
            error(start, "the file is empty: a pipeline needs 'sources' and 'sinks'")
            return nil
        }
        let value = convert(root)
        guard case .mapping(let entries, let at) = value else {
            error(value.location, "a pipeline file must be a map with 'sources' and 'sinks', not \(value.kindDescription)")
            return nil
        }
        return build(entries, at: at)
    }

    mutating func report(_ error: YamlError) {
        func location(_ mark: Mark) -> SourceLocation {
            SourceLocation(file: file, line: max(mark.line, 1), column: max(mark.column, 1))
        }
        func describe(_ context: YamlError.Context?, _ problem: String) -> String {
            guard let context else { return problem }
            return "\(problem) (\(context.text) at line \(context.mark.line), column \(context.mark.column))"
        }
        switch error {
        case .scanner(let context, let problem, let mark, _),
             .parser(let context, let problem, let mark, _),
             .composer(let context, let problem, let mark, _):
            self.error(location(mark), "invalid YAML: \(describe(context, problem))")
        case .duplicatedKeysInMapping(let duplicates, let context):
            let keys = duplicates.map { "'\($0)'" }.joined(separator: ", ")
            self.error(location(context.mark), "duplicate key \(keys) in one map")
        case .reader(let problem, let offset, _, let yaml):
            var at = start
            if let offset {
                let prefix = yaml.prefix(offset)
                let line = prefix.split(separator: "\n", omittingEmptySubsequences: false)
                at = SourceLocation(file: file, line: line.count, column: (line.last?.count ?? 0) + 1)
            }
            self.error(at, "invalid YAML: \(problem)")
        default:
            self.error(start, "invalid YAML: \(error)")
        }
    }

    func location(of node: Node) -> SourceLocation {
        let mark: Mark?
        switch node {
        case .scalar(let scalar): mark = scalar.mark
        case .mapping(let mapping): mark = mapping.mark
        case .sequence(let sequence): mark = sequence.mark
        case .alias(let alias): mark = alias.mark
        }
        guard let mark else { return start }
        return SourceLocation(file: file, line: mark.line, column: mark.column)
    }

    mutating func convert(_ node: Node) -> ConfigValue {
        let at = location(of: node)
        switch node {
        case .scalar(let scalar):
            let quoted = scalar.style == .singleQuoted || scalar.style == .doubleQuoted
                || scalar.style == .literal || scalar.style == .folded
            return .scalar(substitute(scalar.string, at: at), quoted: quoted, at: at)
        case .sequence(let sequence):
            return .sequence(sequence.map { convert($0) }, at: at)
        case .mapping(let mapping):
            var entries: [ConfigEntry] = []
            for (key, value) in mapping {
                let keyAt = location(of: key)
                guard case .scalar(let scalar) = key else {
                    error(keyAt, "a map key must be a plain word, not a list or a map")
                    continue
                }
                entries.append(ConfigEntry(key: scalar.string, keyLocation: keyAt, value: convert(value)))
            }
            return .mapping(entries, at: at)
        case .alias:
            error(at, "YAML aliases are not supported in pipeline files")
            return .scalar("", quoted: true, at: at)
        }
    }

    /// Replaces `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`.
    mutating func substitute(_ text: String, at: SourceLocation) -> String {
        guard text.contains("$") else { return text }
        var result = ""
        var index = text.startIndex
        while index < text.endIndex {
            let character = text[index]
            guard character == "$" else {
                result.append(character)
                index = text.index(after: index)
                continue
            }
            let next = text.index(after: index)
            if next < text.endIndex, text[next] == "$" {
                result.append("$")
                index = text.index(after: next)
                continue
            }
            guard next < text.endIndex, text[next] == "{" else {
                result.append("$")
                index = next
                continue
            }
            guard let close = text[next...].firstIndex(of: "}") else {
                error(at, "unterminated '${' in '\(text)'")
                return text
            }
            let body = text[text.index(after: next)..<close]
            let name: Substring
            var fallback: Substring?
            if let separator = body.range(of: ":-") {
                name = body[..<separator.lowerBound]
                fallback = body[separator.upperBound...]
            } else {
                name = body
            }
            if name.isEmpty || !name.allSatisfy({ $0 == "_" || ($0.isASCII && ($0.isLetter || $0.isNumber)) }) || name.first!.isNumber {
                error(at, "'${\(body)}' is not a valid variable reference (expected ${NAME} or ${NAME:-default})")
            } else if let value = environment[String(name)], !(fallback != nil && value.isEmpty) {
                result += value
            } else if let fallback {
                result += fallback
            } else {
                error(at, "environment variable '\(name)' is not set and has no default (write ${\(name):-default})")
            }
            index = text.index(after: close)
        }
        return result
    }

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
            case "metrics":
                readMetricsSettings(entry.value, into: &settings)
            default:
                var message = "settings: unknown key '\(entry.key)'"
                if let suggestion = closestMatch(to: entry.key, in: known) { message += " (did you mean '\(suggestion)'?)" }
                error(entry.keyLocation, message)
            }
        }
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
                if let suggestion = closestMatch(to: entry.key, in: ["listen"]) { message += " (did you mean 'listen'?)" }
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
                if let found = registry.descriptor(for: type) {
                    if found.kind == kind {
                        descriptor = found
                    } else {
                        error(typeAt, "\(label): '\(type)' is a \(found.kind.rawValue) type; move it under '\(found.kind.sectionKey)' or use a \(kind.rawValue) type (\(typeNames(kind)))")
                    }
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

    // MARK: The graph

    mutating func checkGraph(_ stages: [ParsedStage], alsoRead: Set<String>) {
        let byID = Dictionary(stages.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        var readers: [String: Int] = [:]

        for stage in stages where stage.kind != .source {
            let label = "\(stage.kind.rawValue) '\(stage.id)'"
            if stage.inputs.isEmpty, !stage.inputsInvalid {
                error(stage.inputsKeyLocation ?? stage.idLocation, "\(label): no inputs; list the sources or filters it reads under 'inputs'")
            }
            var listed: Set<String> = []
            for input in stage.inputs {
                if !listed.insert(input.id).inserted {
                    error(input.at, "\(label): input '\(input.id)' is listed twice")
                    continue
                }
                guard let target = byID[input.id] else {
                    var message = "\(label): input '\(input.id)' does not exist"
                    let candidates = stages.filter { $0.kind != .sink && $0.id != stage.id }.map(\.id)
                    if let suggestion = closestMatch(to: input.id, in: candidates) { message += " (did you mean '\(suggestion)'?)" }
                    error(input.at, message)
                    continue
                }
                if target.kind == .sink {
                    error(input.at, "\(label): input '\(input.id)' is a sink; sinks produce nothing to read")
                    continue
                }
                if target.id == stage.id {
                    error(input.at, "\(label): a stage cannot read its own output")
                    continue
                }
                readers[input.id, default: 0] += 1
            }
        }

        let alsoRead = alsoRead.union(stages.compactMap(\.namedByInvalidInputs))
        for stage in stages where stage.kind != .sink && readers[stage.id] == nil && !alsoRead.contains(stage.id) {
            let what = stage.kind == .source ? "source" : "filter"
            error(stage.idLocation, "\(what) '\(stage.id)': nothing reads it; list it under 'inputs' of a filter or sink")
        }

        // Cycles can only run through filters: sources have no inputs and
        // sinks no readers. Depth-first search, reporting each cycle once.
        var state: [String: Int] = [:]  // 1 visiting, 2 done
        var path: [String] = []
        var reported: Set<String> = []
        func visit(_ id: String, _ session: inout LoadSession) {
            guard let stage = byID[id], stage.kind == .filter else { return }
            if state[id] == 2 { return }
            if state[id] == 1 {
                guard let start = path.firstIndex(of: id) else { return }
                let cycle = Array(path[start...]) + [id]
                let key = Set(cycle).sorted().joined(separator: ",")
                if reported.insert(key).inserted {
                    let first = cycle.dropLast().compactMap { byID[$0] }.min { $0.idLocation < $1.idLocation }!
                    session.error(first.idLocation, "filter '\(first.id)': its inputs form a cycle: \(cycle.joined(separator: " -> "))")
                }
                return
            }
            state[id] = 1
            path.append(id)
            for input in stage.inputs { visit(input.id, &session) }
            path.removeLast()
            state[id] = 2
        }
        for stage in stages where stage.kind == .filter { visit(stage.id, &self) }
    }
}

/// `lastPathComponent` without Foundation.
private extension String {
    var lastPathComponent: String {
        let trimmed = self.hasSuffix("/") ? String(self.dropLast()) : self
        return trimmed.split(separator: "/").last.map(String.init) ?? trimmed
    }
}

/// Why a file could not be read.
struct ReadError: Error, CustomStringConvertible {
    var description: String
}

/// A pipeline file's text: at most 16 MiB of UTF-8.
func readTextFile(_ path: String) throws(ReadError) -> String {
    let limit = 16 << 20
    let bytes: [UInt8]
    do {
        bytes = try ArchiveIO.readAll(path, limit: limit + 1)
    } catch let error as ArchiveError {
        throw ReadError(description: error.message)
    } catch {
        throw ReadError(description: "\(error)")
    }
    if bytes.count > limit { throw ReadError(description: "the file is larger than 16 MiB; is it a pipeline file?") }
    guard let text = String(validating: bytes, as: UTF8.self) else {
        throw ReadError(description: "the file is not valid UTF-8")
    }
    return text
}
