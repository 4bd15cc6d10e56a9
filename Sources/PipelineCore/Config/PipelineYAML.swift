import Yams

/// Reading the YAML text: Yams nodes to ``ConfigValue``s with their
/// positions, YAML errors as located diagnostics, `${VAR}` substitution.
extension LoadSession {
    mutating func load(_ text: String) -> PipelinePlan? {
        textEnd = Self.lineAndColumn(after: Substring(text))
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

    /// Where a libyaml mark is in the file. libyaml puts the end of the
    /// stream (and an empty node there) on a line of its own, one past the
    /// last line of a text without a final line break: such a mark is given
    /// as the end of the text, a position the file has.
    func location(_ mark: Mark) -> SourceLocation {
        let at = (line: max(mark.line, 1), column: max(mark.column, 1))
        let inside = at.line < textEnd.line || (at.line == textEnd.line && at.column <= textEnd.column)
        return SourceLocation(file: file, line: inside ? at.line : textEnd.line, column: inside ? at.column : textEnd.column)
    }

    mutating func report(_ error: YamlError) {
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
            // Yams names the keys and marks the first in its own sort order,
            // which is no order when a key is not a string or two keys are
            // the same text with different tags: the same file then gave a
            // different message and position from one load to the next.
            let unconvertible = "<uncovertable>"  // Yams's name for a key that is not a scalar
            let names = duplicates.filter { $0 != unconvertible }.sorted()
            var keys = names.map { "'\($0)'" }.joined(separator: ", ")
            if names.count < duplicates.count { keys += names.isEmpty ? "that is not a string" : " and a key that is not a string" }
            let ordered = names.count == duplicates.count && Set(names).count == names.count
            self.error(ordered ? location(context.mark) : start, "duplicate key \(keys) in one map")
        case .reader(let problem, let offset, _, let yaml):
            var at = start
            if let offset {
                let (line, column) = Self.lineAndColumn(after: yaml.prefix(offset))
                at = SourceLocation(file: file, line: line, column: column)
            }
            self.error(at, "invalid YAML: \(problem)")
        default:
            self.error(start, "invalid YAML: \(error)")
        }
    }

    /// The line and column (1-based) just after `prefix`, counted as libyaml
    /// counts its marks: columns in Unicode scalars, lines ended by LF, CR,
    /// CRLF, NEL, LS or PS. (Yams gives a reader error's offset in Characters,
    /// where CRLF is one, so splitting the text on "\n" would miss CRLF breaks.)
    static func lineAndColumn(after prefix: Substring) -> (line: Int, column: Int) {
        var line = 1
        var column = 1
        var afterCR = false
        for scalar in prefix.unicodeScalars {
            switch scalar {
            case "\n" where afterCR:
                afterCR = false
            case "\n", "\r", "\u{85}", "\u{2028}", "\u{2029}":
                line += 1
                column = 1
                afterCR = scalar == "\r"
            default:
                afterCR = false
                column += 1
            }
        }
        return (line, column)
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
        return location(mark)
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
}
