#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Clocks: wall time for records, and the mapping from the kernel's monotonic
/// clock (`bpf_ktime_get_ns`) to wall time.
public enum Clock {
    /// Now, nanoseconds since the Unix epoch.
    public static func wallNs() -> Int64 { read(CLOCK_REALTIME) }

    /// Now on CLOCK_MONOTONIC, the clock `bpf_ktime_get_ns` reads.
    public static func monotonicNs() -> Int64 { read(CLOCK_MONOTONIC) }

    /// Wall time minus monotonic time, measured as the midpoint of a tight
    /// bracket so that `ktime + offset` is wall time to within a microsecond.
    public static func monotonicToWallOffsetNs() -> Int64 {
        var best = Int64.max
        var offset: Int64 = 0
        for _ in 0..<5 {
            let before = monotonicNs()
            let wall = wallNs()
            let after = monotonicNs()
            if after - before < best {
                best = after - before
                offset = wall - (before + (after - before) / 2)
            }
        }
        return offset
    }

    private static func read(_ clock: clockid_t) -> Int64 {
        var spec = timespec()
        clock_gettime(clock, &spec)
        return Int64(spec.tv_sec) * 1_000_000_000 + Int64(spec.tv_nsec)
    }
}

/// A UTC calendar date and time of day, from nanoseconds since the epoch.
public struct UTCDateTime: Sendable, Equatable {
    public var year, month, day, hour, minute, second: Int
    /// Nanoseconds within the second, 0...999_999_999.
    public var nanosecond: Int

    public init(year: Int, month: Int, day: Int, hour: Int, minute: Int, second: Int, nanosecond: Int) {
        self.year = year
        self.month = month
        self.day = day
        self.hour = hour
        self.minute = minute
        self.second = second
        self.nanosecond = nanosecond
    }

    /// Splits epoch nanoseconds into a proleptic Gregorian UTC date and time
    /// (days-to-civil after Howard Hinnant's published algorithm).
    @inlinable
    public init(epochNs: Int64) {
        var seconds = epochNs / 1_000_000_000
        var nanos = epochNs % 1_000_000_000
        if nanos < 0 {
            nanos += 1_000_000_000
            seconds -= 1
        }
        var days = seconds / 86_400
        var secondOfDay = seconds % 86_400
        if secondOfDay < 0 {
            secondOfDay += 86_400
            days -= 1
        }
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthIndex = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * monthIndex + 2) / 5 + 1
        let month = monthIndex < 10 ? monthIndex + 3 : monthIndex - 9
        self.init(
            year: Int(yearOfEra + era * 400 + (month <= 2 ? 1 : 0)), month: Int(month), day: Int(day),
            hour: Int(secondOfDay / 3600), minute: Int(secondOfDay % 3600 / 60), second: Int(secondOfDay % 60),
            nanosecond: Int(nanos)
        )
    }

    /// Days since the epoch of a civil date (the inverse of the above).
    public static func epochDays(year: Int, month: Int, day: Int) -> Int64 {
        let y = Int64(month <= 2 ? year - 1 : year)
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let m = Int64(month)
        let dayOfYear = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + Int64(day) - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    /// `yyyyMMdd'T'HHmmss'Z'`, as file and segment names use it.
    public var compact: String {
        func pad(_ value: Int, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return pad(year, 4) + pad(month, 2) + pad(day, 2) + "T" + pad(hour, 2) + pad(minute, 2) + pad(second, 2) + "Z"
    }
}
