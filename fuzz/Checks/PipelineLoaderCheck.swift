import BuiltinStages
import PipelineCore

/// Pipeline file text through ``PipelineLoader`` with the stage types
/// pipelined ships (``Builtins/registry``), as `run`, `validate` and reload
/// load a file. Bytes that are not UTF-8 stop where `load(path:)` stops them.
///
/// Properties: the loader returns a plan or diagnostics, never both, never
/// neither; every diagnostic names the file, has a message and a position
/// inside the text (a line that exists, a column no further than one past
/// the longest line); diagnostics are sorted and distinct. A plan has a
/// source and a sink, distinct valid ids, and inputs that name stages of
/// the plan other than themselves, none on a source. Loading is
/// deterministic: the same text gives the same diagnostics or stage ids.
enum PipelineLoaderCheck {
    static let file = "fuzz.yaml"
    static let loader = PipelineLoader(
        registry: Builtins.registry,
        environment: ["HOME": "/root", "PIPELINED_NODE": "node-a", "EMPTY": ""]
    )

    static func check(_ input: UnsafeRawBufferPointer) throws(PropertyViolation) {
        guard let text = String(validating: input, as: UTF8.self) else { return }
        let first = outcome(text)
        let second = outcome(text)
        switch (first, second) {
        case (.success(let plan), .success(let again)):
            try check(plan)
            try require(plan.stages.map(\.id) == again.stages.map(\.id), "two loads of one text gave different plans")
        case (.failure(let error), .failure(let again)):
            try check(error.diagnostics, text)
            try require(error.diagnostics == again.diagnostics, "two loads of one text gave different diagnostics")
        default:
            throw PropertyViolation("one text loaded once and failed once")
        }
    }

    static func outcome(_ text: String) -> Result<PipelinePlan, PipelineFileError> {
        Result { () throws(PipelineFileError) in try loader.load(text: text, file: file) }
    }

    static func check(_ plan: PipelinePlan) throws(PropertyViolation) {
        let ids = plan.stages.map(\.id)
        try require(Set(ids).count == ids.count, "a plan with a repeated stage id: \(ids)")
        try require(plan.stages.contains { $0.kind == .source }, "a plan without a source")
        try require(plan.stages.contains { $0.kind == .sink }, "a plan without a sink")
        for stage in plan.stages {
            try require(!stage.id.isEmpty && stage.id.utf8.count <= 64, "a plan with stage id '\(stage.id)'")
            if stage.kind == .source {
                try require(stage.inputs.isEmpty, "source '\(stage.id)' has inputs \(stage.inputs)")
            } else {
                try require(!stage.inputs.isEmpty, "\(stage.kind) '\(stage.id)' has no input")
            }
            for input in stage.inputs {
                try require(input != stage.id && ids.contains(input), "stage '\(stage.id)' reads '\(input)', which is not another stage of the plan")
            }
            try require(stage.queue.capacityEvents > 0, "stage '\(stage.id)' has a queue of \(stage.queue.capacityEvents) events")
        }
        try require(plan.settings.batchEvents > 0, "a plan with batches of \(plan.settings.batchEvents) events")
    }

    static func check(_ diagnostics: [Diagnostic], _ text: String) throws(PropertyViolation) {
        try require(!diagnostics.isEmpty, "a failed load without a diagnostic")
        let (lines, longest) = extent(text)
        for diagnostic in diagnostics {
            let at = diagnostic.location
            try require(at.file == file, "a diagnostic names file '\(at.file)': \(diagnostic)")
            try require(!diagnostic.message.isEmpty, "a diagnostic without a message at \(at.line):\(at.column)")
            try require((1...lines).contains(at.line), "diagnostic on line \(at.line) of a \(lines)-line text: \(diagnostic)")
            try require((1...(longest + 1)).contains(at.column), "diagnostic at column \(at.column), the longest line has \(longest) characters: \(diagnostic)")
        }
        try require(Set(diagnostics).count == diagnostics.count, "repeated diagnostics")
        for (earlier, later) in zip(diagnostics, diagnostics.dropFirst()) {
            try require(earlier.location <= later.location, "diagnostics out of order: \(earlier) before \(later)")
        }
    }

    /// How many lines YAML sees in `text` (its line breaks are LF, CR, CRLF,
    /// NEL, LS and PS; a mark may sit on the line after the last break) and
    /// the length of the longest, in Unicode scalars (libyaml's columns).
    /// Counted here apart from the loader's own position code on purpose: a
    /// check that shared the code it checks could not catch its mistakes.
    static func extent(_ text: String) -> (lines: Int, longest: Int) {
        var lines = 1
        var longest = 0
        var current = 0
        var afterCR = false
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n" where afterCR:
                afterCR = false
            case "\n", "\r", "\u{85}", "\u{2028}", "\u{2029}":
                lines += 1
                current = 0
                afterCR = scalar == "\r"
            default:
                afterCR = false
                current += 1
                longest = max(longest, current)
            }
        }
        return (lines, longest)
    }
}
