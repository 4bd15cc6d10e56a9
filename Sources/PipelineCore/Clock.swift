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
