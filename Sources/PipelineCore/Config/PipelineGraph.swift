/// The graph rules: inputs that exist and are not sinks, no stage without
/// inputs or readers, no cycles. No rule names a stage type.
extension LoadSession {
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
