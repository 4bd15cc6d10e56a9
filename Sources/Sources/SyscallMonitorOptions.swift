import PipelineCore

/// Options of the `syscall_monitor` source (docs/pipeline-file.md).
public struct SyscallMonitorOptions: StageOptions, Equatable {
    /// How the program hooks syscalls.
    public enum Attach: String, Sendable {
        /// kprobe/kretprobe pairs where the kernel has kprobes, else tracepoints.
        case auto
        /// kprobe/kretprobe pairs on the syscall entry points (as the reference).
        case kprobe
        /// The `syscalls/sys_enter_*` and `sys_exit_*` tracepoints.
        case tracepoint
    }

    /// Where a syscall's arguments are read.
    public enum Capture: String, Sendable {
        /// `exit` where the kernel has BTF and `bpf_task_pt_regs` (5.15 and
        /// later), else `entry`.
        case auto
        /// One program per syscall, at its exit, reading the arguments from
        /// the task's saved user registers (execve and execveat still
        /// capture theirs at entry: the exec has replaced them by its exit).
        case exit
        /// An entry program saves the arguments in a map for the exit
        /// program (the reference's design; any kernel).
        case entry
    }

    /// How records reach user space.
    public enum Transport: String, Sendable {
        /// The ring buffer where the kernel has one (5.8 and later), else
        /// the perf event array.
        case auto
        /// A per-CPU perf event array, as the reference.
        case perf
        /// One BPF ring buffer shared by all CPUs: about half the kernel-side
        /// cost of a perf record per event, and records in kernel order.
        case ringbuf
    }

    public var events: [EventKind]
    public var attach: Attach
    /// Where the args are read (`auto`: at exit where the kernel can).
    public var capture: Capture
    public var transport: Transport
    /// Pages per CPU for the perf buffer (a power of two).
    public var bufferPages: Int
    /// Bytes of the ring buffer (a power of two, a multiple of the page size).
    public var ringbufBytes: Int
    /// Return values dropped in the kernel (at most ``maxSkipRetvals``).
    public var skipRetvals: [Int64]
    /// Whether successful events of each scope are reported (the reference's
    /// `drop_syscall(scope)`); failed events are always reported.
    public var visibility: [Scope: Bool]
    /// How long the reader waits before handing a partial batch on, so that a
    /// quiet system still sees its events promptly.
    public var flushIntervalNs: Int64

    /// The most return values the kernel program can skip.
    public static let maxSkipRetvals = 8

    public init(
        events: [EventKind] = EventCatalog.all, attach: Attach = .auto, capture: Capture = .auto, transport: Transport = .auto,
        bufferPages: Int = 1024, ringbufBytes: Int = 8 << 20, skipRetvals: [Int64] = [-2, -115],
        visibility: [Scope: Bool] = [:], flushIntervalNs: Int64 = 100_000_000
    ) {
        self.events = events
        self.attach = attach
        self.capture = capture
        self.transport = transport
        self.bufferPages = bufferPages
        self.ringbufBytes = ringbufBytes
        self.skipRetvals = skipRetvals
        self.visibility = visibility
        self.flushIntervalNs = flushIntervalNs
    }

    /// Whether successful events of `scope` are reported.
    public func isVisible(_ scope: Scope) -> Bool { visibility[scope] ?? true }

    public static let specs: [OptionSpec] = [
        OptionSpec("events", "[event]", default: "all", "events to trace, by name or id (\(EventCatalog.all.map(\.name).joined(separator: ", ")))"),
        OptionSpec("attach", "auto|kprobe|tracepoint", default: "auto", "kretprobe pairs where the kernel has kprobes, else syscall tracepoints"),
        OptionSpec("capture", "auto|exit|entry", default: "auto", "where the args are read: exit = at the syscall's exit, from the task's saved registers (one program per syscall; needs BTF and bpf_task_pt_regs, 5.15+), entry = saved by an entry program for the exit; auto = exit where the kernel can"),
        OptionSpec("transport", "auto|perf|ringbuf", default: "auto", "BPF ring buffer where the kernel has one (5.8+), else perf event array (per CPU)"),
        OptionSpec("buffer_pages", "int", default: "1024", "perf buffer pages per CPU, a power of two (perf transport)"),
        OptionSpec("ringbuf_bytes", "size", default: "8MiB", "ring buffer size, a power of two (ringbuf transport)"),
        OptionSpec("skip_retvals", "[int]", default: "[-2, -115]", "return values dropped in the kernel (at most 8)"),
        OptionSpec("visibility", "map scope: bool", default: "all true", "per scope (file, process, network, capabilities): report successful events"),
        OptionSpec("flush_interval", "duration", default: "100ms", "longest a read event waits in a partial batch"),
    ]

    /// Reads the options; nil when the config reported a problem.
    public init?(_ config: StageConfig) {
        let errors = config.diagnostics.count
        var options = SyscallMonitorOptions()
        if let items = config.scalarList("events") {
            var kinds: [EventKind] = []
            for item in items {
                if let kind = EventCatalog.resolve(item.text) {
                    if !kinds.contains(kind) { kinds.append(kind) }
                } else {
                    var message = "'events': unknown event '\(item.text)'"
                    if let suggestion = closestMatch(to: item.text, in: EventCatalog.all.map(\.name)) {
                        message += " (did you mean '\(suggestion)'?)"
                    }
                    config.error(at: item.location, message)
                }
            }
            if kinds.isEmpty, config.diagnostics.count == errors {
                config.error("events", "must name at least one event")
            }
            options.events = kinds.sorted { $0.id < $1.id }
        }
        if let attach = config.choice("attach", ["auto", "kprobe", "tracepoint"]) {
            options.attach = Attach(rawValue: attach)!
        }
        if let capture = config.choice("capture", ["auto", "exit", "entry"]) {
            options.capture = Capture(rawValue: capture)!
        }
        if let transport = config.choice("transport", ["auto", "perf", "ringbuf"]) {
            options.transport = Transport(rawValue: transport)!
        }
        if let pages = config.int("buffer_pages", in: 1...65536) {
            if pages & (pages - 1) != 0 {
                config.error("buffer_pages", "must be a power of two, not \(pages)")
            } else {
                options.bufferPages = pages
            }
        }
        if let bytes = config.size("ringbuf_bytes", in: 4096...(1 << 30)) {
            if bytes & (bytes - 1) != 0 {
                config.error("ringbuf_bytes", "must be a power of two, not \(bytes)")
            } else {
                options.ringbufBytes = bytes
            }
        }
        if config.has("buffer_pages"), options.transport == .ringbuf {
            config.error("buffer_pages", "applies to transport perf; use 'ringbuf_bytes' with transport ringbuf")
        }
        if config.has("ringbuf_bytes"), options.transport == .perf {
            config.error("ringbuf_bytes", "applies to transport ringbuf; use 'buffer_pages' with transport perf")
        }
        if let values = config.intList("skip_retvals", in: Int(Int32.min)...Int(Int32.max)) {
            if values.count > Self.maxSkipRetvals {
                config.error("skip_retvals", "lists \(values.count) values; the kernel program skips at most \(Self.maxSkipRetvals)")
            } else {
                options.skipRetvals = values.map(Int64.init)
            }
        }
        if let entries = config.scalarMap("visibility") {
            for entry in entries {
                guard let scope = Scope(name: entry.key) else {
                    var message = "'visibility': unknown scope '\(entry.key)'"
                    if let suggestion = closestMatch(to: entry.key, in: Scope.allCases.map(\.name)) {
                        message += " (did you mean '\(suggestion)'?)"
                    }
                    config.error(at: entry.keyLocation, message)
                    continue
                }
                switch entry.text.lowercased() {
                case "true", "on", "yes": options.visibility[scope] = true
                case "false", "off", "no": options.visibility[scope] = false
                default: config.error(at: entry.location, "'visibility.\(entry.key)' must be true or false, not '\(entry.text)'")
                }
            }
        }
        if let interval = config.duration("flush_interval", minimumNs: 1_000_000) {
            options.flushIntervalNs = interval
        }
        guard config.diagnostics.count == errors else { return nil }
        self = options
    }
}
