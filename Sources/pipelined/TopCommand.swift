import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import PipelineCore

/// `pipelined top [--url URL]`: a live per-stage view of a running pipeline,
/// read from its metrics endpoint once a second.
///
/// One row per stage: type, records in, out and lost per second, the total
/// lost, queue fill (sinks), and for the kernel source the BPF run time per
/// traced syscall (when `kernel.bpf_stats_enabled` is on). `q` (or Ctrl-C) quits. On
/// a standard output that is not a terminal, or with `--once`, it prints a
/// single plain snapshot (rates over one interval between two scrapes) and
/// exits. An endpoint that cannot be read is a one-line error, exit 1.
struct TopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "top",
        abstract: "Live per-stage rates, losses and queue fill, read from the metrics endpoint.",
        discussion: "Press q to quit. Not on a terminal (or with --once): prints one snapshot and exits."
    )

    @Option(name: .long, help: "The metrics endpoint (settings.metrics.listen of the running pipeline).")
    var url: String = "http://127.0.0.1:9464"

    @Flag(name: .long, help: "Print one plain snapshot and exit (the default when standard output is not a terminal).")
    var once = false

    @Option(name: .long, help: .hidden)
    var intervalMs: Int = 1000

    func validate() throws {
        guard MetricsEndpoint(url) != nil else {
            throw ValidationError("--url must be http://HOST:PORT[/PATH], not '\(url)'")
        }
        guard (50...60_000).contains(intervalMs) else { throw ValidationError("--interval-ms must be between 50 and 60000") }
    }

    func run() throws {
        let endpoint = MetricsEndpoint(url)!
        var previous = try scrape(endpoint)
        if once || isatty(STDOUT_FILENO) == 0 {
            usleep(UInt32(intervalMs) * 1000)
            let current = try scrape(endpoint)
            print(TopTable(previous: previous, current: current).render(title: nil), terminator: "")
            return
        }
        let interrupted = try SignalPipe.install([SIGINT, SIGTERM])
        let terminal = RawTerminal()
        defer { terminal.restore() }
        var current = previous
        while true {
            let table = TopTable(previous: previous, current: current)
            let title = "pipelined top - \(url) - \(Self.clock()) - q quits"
            FileHandleStdout.write("\u{1B}[H\u{1B}[2J" + table.render(title: title).split(separator: "\n", omittingEmptySubsequences: false).joined(separator: "\r\n"))
            switch terminal.waitForKey(timeoutMs: intervalMs, interrupted: interrupted) {
            case .quit:
                FileHandleStdout.write("\r\n")
                return
            case .timedOut:
                break
            }
            previous = current
            do {
                current = try scrape(endpoint)
            } catch {
                terminal.restore()
                throw error
            }
        }
    }

    private func scrape(_ endpoint: MetricsEndpoint) throws -> Scrape {
        switch endpoint.get() {
        case .success(let body):
            return Scrape(text: body, monotonicNs: Self.monotonicNs())
        case .failure(let message):
            FileHandleStderr.write("pipelined top: \(url): \(message)\n")
            throw ExitCode(ExitStatus.failure)
        }
    }

    private static func monotonicNs() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
    }

    private static func clock() -> String {
        var now = time(nil)
        var parts = tm()
        localtime_r(&now, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))"
    }
}

/// One reading of the endpoint: every sample, by series name and labels.
struct Scrape {
    struct Sample {
        var name: String
        var labels: [String: String]
        var value: Double
    }

    var samples: [Sample] = []
    var monotonicNs: Int64

    /// Parses the Prometheus text format (comments skipped; label values
    /// with escaped quotes are read whole).
    init(text: String, monotonicNs: Int64) {
        self.monotonicNs = monotonicNs
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            if let sample = Self.parse(line) { samples.append(sample) }
        }
    }

    private static func parse(_ line: Substring) -> Sample? {
        var labels: [String: String] = [:]
        let name: Substring
        var rest: Substring
        if let open = line.firstIndex(of: "{") {
            name = line[..<open]
            rest = line[line.index(after: open)...]
            while let equals = rest.firstIndex(of: "=") {
                let key = rest[..<equals].trimmingPrefix(",")
                rest = rest[rest.index(after: equals)...]
                guard rest.first == "\"" else { return nil }
                rest = rest.dropFirst()
                var value = ""
                var escaped = false
                while let character = rest.first {
                    rest = rest.dropFirst()
                    if escaped { value.append(character == "n" ? "\n" : character); escaped = false }
                    else if character == "\\" { escaped = true }
                    else if character == "\"" { break }
                    else { value.append(character) }
                }
                labels[String(key)] = value
                if rest.first == "}" { break }
            }
            guard rest.first == "}" else { return nil }
            rest = rest.dropFirst()
        } else {
            guard let space = line.firstIndex(of: " ") else { return nil }
            name = line[..<space]
            rest = line[space...]
        }
        guard let value = Double(rest.split(separator: " ").first ?? "") else { return nil }
        return Sample(name: String(name), labels: labels, value: value)
    }

    /// The sum of the series `name` over the samples of `stage`.
    func value(_ name: String, stage: String) -> Double? {
        let matching = samples.filter { $0.name == name && $0.labels["stage"] == stage }
        return matching.isEmpty ? nil : matching.reduce(0) { $0 + $1.value }
    }

    /// The runs of `stage`'s exit programs (`tp_exit_*`, `tp_ret_*`,
    /// `kp_exit_*`, `kp_ret_*`): one per syscall traced.
    func exitRuns(stage: String) -> Double? {
        let matching = samples.filter { sample in
            guard sample.name == "pipelined_stage_bpf_runs_total", sample.labels["stage"] == stage,
                  let program = sample.labels["program"] else { return false }
            return program.contains("_exit_") || program.contains("_ret_")
        }
        return matching.isEmpty ? nil : matching.reduce(0) { $0 + $1.value }
    }

    /// Every stage, in the order the endpoint first names it, with its type.
    var stages: [(id: String, type: String)] {
        var seen = Set<String>()
        var result: [(String, String)] = []
        for sample in samples where sample.name == "pipelined_stage_events_in_total" {
            guard let id = sample.labels["stage"], seen.insert(id).inserted else { continue }
            result.append((id, sample.labels["type"] ?? ""))
        }
        return result.sorted { $0.0 < $1.0 }
    }
}

/// The rows `top` shows, from two scrapes.
struct TopTable {
    var previous: Scrape
    var current: Scrape

    func render(title: String?) -> String {
        let seconds = max(Double(current.monotonicNs - previous.monotonicNs) / 1e9, 1e-9)
        var rows: [[String]] = [["STAGE", "TYPE", "IN/S", "OUT/S", "LOST/S", "LOST", "QUEUE", "BPF NS/SYSCALL"]]
        for (id, type) in current.stages {
            func rate(_ name: String) -> String {
                guard let now = current.value(name, stage: id) else { return "-" }
                let before = previous.value(name, stage: id) ?? 0
                return Self.number(max(0, now - before) / seconds)
            }
            let lost = current.value("pipelined_stage_events_lost_total", stage: id)
            var queue = "-"
            if let depth = current.value("pipelined_stage_queue_depth_events", stage: id),
               let capacity = current.value("pipelined_stage_queue_capacity_events", stage: id), capacity > 0 {
                queue = "\(Int(depth))/\(Int(capacity)) \(Int((depth / capacity * 100).rounded()))%"
            }
            // Kernel time per traced syscall: every program's run time over
            // the runs of the exit programs (one per syscall, whichever
            // capture). Not per record: with pushdown most syscalls submit none.
            var bpf = "-"
            if let timeNow = current.value("pipelined_stage_bpf_run_seconds_total", stage: id),
               let exitsNow = current.exitRuns(stage: id) {
                let time = timeNow - (previous.value("pipelined_stage_bpf_run_seconds_total", stage: id) ?? 0)
                let syscalls = exitsNow - (previous.exitRuns(stage: id) ?? 0)
                if syscalls > 0 { bpf = Self.number(time * 1e9 / syscalls) }
            }
            rows.append([id, type, rate("pipelined_stage_events_in_total"), rate("pipelined_stage_events_out_total"),
                         rate("pipelined_stage_events_lost_total"), lost.map { Self.number($0) } ?? "-", queue, bpf])
        }
        var widths = [Int](repeating: 0, count: rows[0].count)
        for row in rows {
            for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) }
        }
        var text = title.map { $0 + "\n\n" } ?? ""
        for row in rows {
            let cells = row.enumerated().map { index, cell in
                // Names left, numbers right.
                let pad = String(repeating: " ", count: widths[index] - cell.count)
                return index < 2 ? cell + pad : pad + cell
            }
            text += cells.joined(separator: "  ") + "\n"
        }
        return text
    }

    /// Whole numbers as they are; large ones with k or M.
    static func number(_ value: Double) -> String {
        if value >= 10_000_000 { return "\(Int((value / 1_000_000).rounded()))M" }
        if value >= 100_000 { return "\(Int((value / 1_000).rounded()))k" }
        return "\(Int(value.rounded()))"
    }
}

/// `http://HOST:PORT[/PATH]`; the path defaults to `/metrics`.
struct MetricsEndpoint {
    var host: String
    var port: Int
    var path: String

    init?(_ url: String) {
        guard url.hasPrefix("http://") else { return nil }
        let rest = url.dropFirst("http://".count)
        let authority = rest.prefix { $0 != "/" }
        let path = rest.dropFirst(authority.count)
        guard let address = ListenAddress(parsing: String(authority)), address.port > 0 else { return nil }
        host = address.host
        port = address.port
        self.path = path.isEmpty || path == "/" ? "/metrics" : String(path)
    }

    enum Outcome {
        case success(String)
        case failure(String)
    }

    /// One HTTP/1.0 GET; the body of a 200 answer.
    func get() -> Outcome {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var found: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, "\(port)", &hints, &found) == 0, let first = found else {
            return .failure("cannot resolve '\(host)'")
        }
        defer { freeaddrinfo(found) }
        let fd = socket(first.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard connect(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0 else {
            return .failure("cannot connect: \(String(cString: strerror(errno))) (is pipelined running with this settings.metrics.listen?)")
        }
        let request = Array("GET \(path) HTTP/1.0\r\nHost: \(host):\(port)\r\n\r\n".utf8)
        guard send(fd, request, request.count, Int32(MSG_NOSIGNAL)) == request.count else {
            return .failure("cannot send the request: \(String(cString: strerror(errno)))")
        }
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = recv(fd, &chunk, chunk.count, 0)
            if count < 0, errno == EINTR { continue }
            if count < 0 { return .failure("reading the answer failed: \(String(cString: strerror(errno)))") }
            if count == 0 { break }
            response += chunk[0..<count]
        }
        let text = String(decoding: response, as: UTF8.self)
        guard let end = text.range(of: "\r\n\r\n") else { return .failure("not an HTTP answer") }
        let status = text[..<end.lowerBound].split(separator: "\r\n").first ?? ""
        guard status.split(separator: " ").dropFirst().first == "200" else {
            return .failure("the endpoint answered '\(status)'")
        }
        return .success(String(text[end.upperBound...]))
    }
}

/// The terminal in raw mode (no echo, keys as typed) while `top` runs.
final class RawTerminal {
    private var saved = termios()
    private var active = false

    enum Key { case quit, timedOut }

    init() {
        guard tcgetattr(STDIN_FILENO, &saved) == 0 else { return }
        var raw = saved
        raw.c_lflag &= ~tcflag_t(ICANON | ECHO)
        tcsetattr(STDIN_FILENO, TCSANOW, &raw)
        active = true
        FileHandleStdout.write("\u{1B}[?25l")
    }

    /// Waits up to `timeoutMs` for `q` (or a signal on `interrupted`).
    func waitForKey(timeoutMs: Int, interrupted: Int32) -> Key {
        var deadline = timespec()
        clock_gettime(CLOCK_MONOTONIC, &deadline)
        let end = Int64(deadline.tv_sec) * 1000 + Int64(deadline.tv_nsec) / 1_000_000 + Int64(timeoutMs)
        while true {
            var now = timespec()
            clock_gettime(CLOCK_MONOTONIC, &now)
            let left = end - (Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000)
            if left <= 0 { return .timedOut }
            var fds = [pollfd(fd: STDIN_FILENO, events: Int16(POLLIN), revents: 0), pollfd(fd: interrupted, events: Int16(POLLIN), revents: 0)]
            let ready = poll(&fds, 2, Int32(left))
            if ready < 0, errno == EINTR { continue }
            if fds[1].revents != 0 { return .quit }
            if fds[0].revents & Int16(POLLHUP | POLLERR) != 0 { return .quit }
            if fds[0].revents & Int16(POLLIN) != 0 {
                var byte: UInt8 = 0
                if read(STDIN_FILENO, &byte, 1) <= 0 { return .quit }
                if byte == UInt8(ascii: "q") || byte == UInt8(ascii: "Q") { return .quit }
            }
        }
    }

    func restore() {
        guard active else { return }
        active = false
        tcsetattr(STDIN_FILENO, TCSANOW, &saved)
        FileHandleStdout.write("\u{1B}[?25h")
    }
}

/// Unbuffered writes to standard output (the screen is redrawn whole).
enum FileHandleStdout {
    static func write(_ text: String) { writeAll(text, to: STDOUT_FILENO) }
}
