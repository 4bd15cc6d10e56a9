/// Sizes (`64MiB`, `512KiB`, `4096`) and durations (`500ms`, `10s`, `5m`, `1h`)
/// as pipeline files write them.
public enum Units {
    /// Bytes for a size; nil when the text is not a size.
    public static func parseSize(_ text: String) -> Int? {
        let trimmed = text.trimmingSpaces
        let suffixes: [(String, Int)] = [
            ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40),
            ("KB", 1000), ("MB", 1_000_000), ("GB", 1_000_000_000), ("TB", 1_000_000_000_000),
            ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("B", 1),
        ]
        for (suffix, multiplier) in suffixes where trimmed.hasSuffix(suffix) {
            let number = trimmed.dropLast(suffix.count).trimmingSpaces
            guard let value = Int(number), value >= 0 else { return nil }
            let (product, overflow) = value.multipliedReportingOverflow(by: multiplier)
            return overflow ? nil : product
        }
        guard let value = Int(trimmed), value >= 0 else { return nil }
        return value
    }

    /// Nanoseconds for a duration; nil when the text is not a duration.
    public static func parseDurationNs(_ text: String) -> Int64? {
        let trimmed = text.trimmingSpaces
        let suffixes: [(String, Int64)] = [
            ("ns", 1), ("us", 1_000), ("ms", 1_000_000), ("s", 1_000_000_000),
            ("m", 60_000_000_000), ("h", 3_600_000_000_000), ("d", 86_400_000_000_000),
        ]
        for (suffix, multiplier) in suffixes where trimmed.hasSuffix(suffix) {
            let number = trimmed.dropLast(suffix.count)
            // "5m" must not be read as "5" + "m" when it is "5ms"; the order above
            // tries the two-letter suffixes first.
            guard let value = Int64(number), value >= 0 else { continue }
            let (product, overflow) = value.multipliedReportingOverflow(by: multiplier)
            return overflow ? nil : product
        }
        return nil
    }

    /// Formats bytes the way pipeline files write them (`64MiB`).
    public static func formatSize(_ bytes: Int) -> String {
        for (suffix, unit) in [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] where bytes >= unit && bytes % unit == 0 {
            return "\(bytes / unit)\(suffix)"
        }
        return String(bytes)
    }

    /// Formats nanoseconds the way pipeline files write them (`10m`).
    public static func formatDuration(_ ns: Int64) -> String {
        for (suffix, unit) in [("h", Int64(3_600_000_000_000)), ("m", 60_000_000_000), ("s", 1_000_000_000), ("ms", 1_000_000)] where ns >= unit && ns % unit == 0 {
            return "\(ns / unit)\(suffix)"
        }
        return "\(ns)ns"
    }
}

extension StringProtocol {
    var trimmingSpaces: String {
        var view = Substring(self)
        while let first = view.first, first == " " || first == "\t" { view.removeFirst() }
        while let last = view.last, last == " " || last == "\t" { view.removeLast() }
        return String(view)
    }
}
