#if canImport(Glibc)
import Glibc
#endif
import Atomics
import CBPF
import Logging
import PipelineCore

/// The `syscall_monitor` source: loads the embedded kernel program
/// (`bpf/pipelined.bpf.c`), attaches it to the requested syscalls, and turns
/// its records into events.
///
///     kernel: sys_enter/sys_exit (or kprobe/kretprobe) ─▶ perf buffer | ring buffer
///     run():  KernelReader.pollOnce ─▶ WireDecoder ─▶ batches ─▶ SourceOutput
///                                   └▶ buffer overflows ─▶ `lost` records
///
/// `prepare` does everything that can fail for a reason the user must fix
/// (privilege, tracefs, kprobes, the verifier) and names that reason; `run`
/// polls on the runtime's source thread until ``stop()``, then detaches the
/// programs, drains what the buffers still hold, and releases the kernel
/// objects.
public final class SyscallMonitorSource: EventSource {
    /// The registry entry for `type: syscall_monitor`.
    public static let descriptor = StageDescriptor.source(
        type: "syscall_monitor", summary: "syscall events from the kernel (eBPF: syscall tracepoints or kprobe pairs)",
        options: SyscallMonitorOptions.self, make: SyscallMonitorSource.init)

    /// How one event's programs were attached.
    public enum AttachMode: String, Sendable, Equatable {
        case tracepoint
        case kprobe
    }

    /// The options this source was built with.
    public let options: SyscallMonitorOptions
    private let stopped = ManagedAtomic<Bool>(false)
    private let lock = ConditionLock()
    // Set in prepare and released at the end of run, both on the runtime's
    // threads in sequence; `lock` guards them against a concurrent
    // `attachments` read from another thread (tests, reports).
    private nonisolated(unsafe) var object: BPFObject?
    private nonisolated(unsafe) var reader: KernelReader?
    private nonisolated(unsafe) var context: StageContext?
    private nonisolated(unsafe) var attached: [(EventKind, AttachMode)] = []
    /// The transport in use: `options.transport`, with `auto` resolved in
    /// `prepare` (written before the reader exists, read-only after).
    private nonisolated(unsafe) var activeTransport: SyscallMonitorOptions.Transport

    /// Creates the source; nothing touches the kernel before ``prepare(_:)``.
    public init(_ options: SyscallMonitorOptions) {
        self.options = options
        activeTransport = options.transport
    }

    /// The transport records travel by: `perf` or `ringbuf` once prepared
    /// (`auto` resolved), `options.transport` before.
    public var transportInUse: SyscallMonitorOptions.Transport {
        lock.withLock { activeTransport }
    }

    /// Which mechanism each event was attached with (empty before `prepare`).
    public var attachments: [(event: String, mode: AttachMode)] {
        lock.withLock { attached.map { ($0.0.name, $0.1) } }
    }

    // MARK: prepare

    /// Checks privilege (exit status 77 when missing), mounts tracefs if
    /// needed, loads the program with the options set, and attaches it.
    public func prepare(_ context: StageContext) throws {
        self.context = context
        // Kernel losses are this source's: its lost series exists from the start.
        context.metrics.loss(.kernel)
        let fail = { (message: String) in StageStartError(stage: context.id, message: message) }
        if let missing = KernelSupport.missingPrivilege() {
            throw StageStartError(stage: context.id, message: missing, exitCode: 77)
        }
        let useKprobes = try chooseAttachMode(context)
        if !useKprobes, let problem = KernelSupport.ensureTracefs() {
            throw fail("the syscall tracepoints need tracefs: \(problem)")
        }
        if useKprobes, options.attach == .auto, let problem = KernelSupport.ensureTracefs() {
            // Only needed if a kprobe fails and an event falls back.
            context.logger.warning("no tracefs, so no fallback to tracepoints: \(problem)")
        }
        if !useKprobes {
            for kind in options.events {
                let name = KernelProgram.kernelName(kind)
                guard KernelSupport.hasTracepoint("syscalls", "sys_enter_\(name)"), KernelSupport.hasTracepoint("syscalls", "sys_exit_\(name)") else {
                    throw fail("event '\(kind.name)': this kernel has no tracepoint syscalls/sys_enter_\(name) (is CONFIG_FTRACE_SYSCALLS set?)")
                }
            }
        }

        // An exec from a thread other than the leader is reported through
        // sched/sched_process_exec (see the program's tp_sched_exec).
        var execHandover = options.events.contains(where: KernelProgram.needsExecHandover)
        if execHandover, !KernelSupport.hasTracepoint("sched", "sched_process_exec") {
            context.logger.warning("this kernel has no tracepoint sched/sched_process_exec: a successful exec from a thread other than the process leader will not be reported")
            execHandover = false
        }

        let resolved = resolveTransport(context)
        lock.withLock { activeTransport = resolved }

        let object: BPFObject
        do {
            object = try BPFObject(elf: KernelProgram.elf(), name: KernelProgram.objectName)
            try configure(object, useKprobes: useKprobes, execHandover: execHandover)
            try object.load()
            try setVisibility(object)
        } catch let error as BPFError {
            throw fail("cannot load the eBPF program: \(error)")
        }
        self.object = object

        var attached: [(EventKind, AttachMode)] = []
        do {
            for kind in options.events {
                let mode = try attach(kind, in: object, kprobes: useKprobes, context: context)
                attached.append((kind, mode))
            }
            // Extra exits (execveat's through sys_exit_execve), once each.
            let attachedTracepoints = Set(attached.filter { $0.1 == .tracepoint }.map(\.0.id))
            var extra = Set<UInt32>()
            for (kind, mode) in attached where mode == .tracepoint {
                for other in KernelProgram.extraTracepointExits(kind) where !attachedTracepoints.contains(other.id) && extra.insert(other.id).inserted {
                    let name = KernelProgram.kernelName(other)
                    guard let program = object.programs.first(where: { $0.name == KernelProgram.programName(other, kprobe: false, exit: true) }) else {
                        throw BPFError("the embedded object has no exit program for \(name)")
                    }
                    try object.attachTracepoint(program.program, category: "syscalls", name: "sys_exit_\(name)")
                    context.logger.info("event \(kind.name): also tracepoint syscalls/sys_exit_\(name) (a successful \(kind.name) returns through it)")
                }
            }
            if execHandover {
                guard let program = object.programs.first(where: { $0.name == KernelProgram.execHandoverProgram }) else {
                    throw BPFError("the embedded object has no program '\(KernelProgram.execHandoverProgram)'")
                }
                try object.attachTracepoint(program.program, category: "sched", name: "sched_process_exec")
                context.logger.info("exec events: also tracepoint sched/sched_process_exec (an exec from a thread other than the leader leaves with the leader's id)")
            }
        } catch let error as BPFError {
            object.detachAll()
            throw fail("cannot attach: \(error)")
        }
        lock.withLock { self.attached = attached }

        do {
            reader = try KernelReader(
                transport: transport(object), decoder: WireDecoder(wallOffsetNs: Clock.monotonicToWallOffsetNs()),
                metrics: context.metrics, dropCheckIntervalNs: options.flushIntervalNs)
        } catch let error as BPFError {
            object.detachAll()
            throw fail("\(error)")
        }
        let buffer = activeTransport == .perf
            ? "perf buffer, \(options.bufferPages) pages per CPU"
            : "ring buffer of \(options.ringbufBytes) bytes"
        context.logger.info("tracing \(options.events.count) event(s) through a \(buffer)")
    }

    /// True for kprobe pairs, false for tracepoints; throws when `attach:
    /// kprobe` was asked of a kernel that has none.
    private func chooseAttachMode(_ context: StageContext) throws -> Bool {
        let hasKprobes = KernelSupport.hasKprobes()
        switch options.attach {
        case .tracepoint:
            return false
        case .kprobe:
            guard hasKprobes else {
                throw StageStartError(
                    stage: context.id,
                    message: "attach: kprobe is impossible: this kernel has no kprobes (no kprobe PMU at /sys/bus/event_source/devices/kprobe and no kprobe_events in tracefs; CONFIG_KPROBES or CONFIG_KPROBE_EVENTS is off). Use 'attach: tracepoint', or 'attach: auto' to fall back to the syscall tracepoints"
                )
            }
            return true
        case .auto:
            if !hasKprobes {
                context.logger.info("attach auto: this kernel has no kprobes; using the syscall tracepoints")
            }
            return hasKprobes
        }
    }

    /// Sets the load-time globals, chooses which programs load, and sizes the
    /// transport maps.
    private func configure(_ object: BPFObject, useKprobes: Bool, execHandover: Bool) throws {
        try object.setReadOnlyGlobal(KernelProgram.Global.selfTgid, UInt32(getpid()))
        var skip = [UInt8]()
        for index in 0..<KernelProgram.maxSkipRetvals {
            let value = index < options.skipRetvals.count ? options.skipRetvals[index] : 0
            withUnsafeBytes(of: value.littleEndian) { skip += $0 }
        }
        try object.setReadOnlyGlobal(KernelProgram.Global.skipRetvals, bytes: skip)
        try object.setReadOnlyGlobal(KernelProgram.Global.skipRetvalsCount, UInt32(min(options.skipRetvals.count, KernelProgram.maxSkipRetvals)))
        try object.setReadOnlyGlobal(KernelProgram.Global.useRingbuf, UInt32(activeTransport == .ringbuf ? 1 : 0))
        // Wake the reader once a sixteenth of the ring waits (512 KiB of the
        // default 8 MiB): early enough that a stalled reader still has most
        // of the ring to fall back on, rare enough (thousands of records)
        // that wake-ups cost nothing per record.
        try object.setReadOnlyGlobal(KernelProgram.Global.ringbufWakeupBytes, UInt64(options.ringbufBytes / 16))

        // Only the requested events' programs, of the chosen kind, are loaded:
        // the verifier time and the kernel memory of the others are saved.
        var wanted = Set<String>()
        // auto may fall back to tracepoints per event: then load both kinds.
        let tracepoints = !useKprobes || options.attach == .auto
        for kind in options.events {
            for exit in [false, true] {
                wanted.insert(KernelProgram.programName(kind, kprobe: useKprobes, exit: exit))
                if tracepoints { wanted.insert(KernelProgram.programName(kind, kprobe: false, exit: exit)) }
            }
            if tracepoints {
                for other in KernelProgram.extraTracepointExits(kind) {
                    wanted.insert(KernelProgram.programName(other, kprobe: false, exit: true))
                }
            }
        }
        if execHandover { wanted.insert(KernelProgram.execHandoverProgram) }
        var found = Set<String>()
        for program in object.programs {
            let load = wanted.contains(program.name)
            if load { found.insert(program.name) }
            guard bpf_program__set_autoload(program.program, load) == 0 else {
                throw BPFError("cannot choose the programs to load", code: errno)
            }
        }
        if let missing = wanted.subtracting(found).sorted().first {
            throw BPFError("the embedded object has no program '\(missing)'")
        }

        // The unused transport keeps its map at the smallest size.
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let ringBytes = activeTransport == .ringbuf ? options.ringbufBytes : page
        let result = bpf_map__set_max_entries(try object.map(named: KernelProgram.Map.ringbuf), UInt32(ringBytes))
        guard result == 0 else { throw BPFError("cannot size the ring buffer to \(ringBytes) bytes", code: result) }
    }

    /// Writes the per-scope switch of successful events (the program's
    /// `drop_syscall(scope)`): non-zero hides a scope's successful events.
    private func setVisibility(_ object: BPFObject) throws {
        let fd = try object.mapFD(named: KernelProgram.Map.visibility)
        for scope in Scope.allCases {
            var key = UInt32(scope.rawValue)
            var hidden: UInt32 = options.isVisible(scope) ? 0 : 1
            let result = bpf_map_update_elem(fd, &key, &hidden, UInt64(BPF_ANY))
            guard result == 0 else { throw BPFError("cannot set the visibility of scope \(scope)", code: errno) }
        }
    }

    /// Attaches one event's entry and exit programs.
    private func attach(_ kind: EventKind, in object: BPFObject, kprobes: Bool, context: StageContext) throws -> AttachMode {
        let programs = Dictionary(object.programs.map { ($0.name, $0.program) }, uniquingKeysWith: { first, _ in first })
        func program(_ exit: Bool, kprobe: Bool) throws -> OpaquePointer {
            let name = KernelProgram.programName(kind, kprobe: kprobe, exit: exit)
            guard let program = programs[name] else { throw BPFError("the embedded object has no program '\(name)'") }
            return program
        }
        let name = KernelProgram.kernelName(kind)
        if kprobes {
            let function = "__x64_sys_\(name)"
            do {
                try object.attachKprobe(try program(false, kprobe: true), function: function, isReturn: false)
                try object.attachKprobe(try program(true, kprobe: true), function: function, isReturn: true)
                context.logger.info("event \(kind.name): kprobe/kretprobe on \(function)")
                return .kprobe
            } catch let error as BPFError where options.attach == .auto {
                context.logger.warning("event \(kind.name): kprobe on \(function) failed (\(error.message)); using its tracepoints")
            }
        }
        try object.attachTracepoint(try program(false, kprobe: false), category: "syscalls", name: "sys_enter_\(name)")
        try object.attachTracepoint(try program(true, kprobe: false), category: "syscalls", name: "sys_exit_\(name)")
        context.logger.info("event \(kind.name): tracepoints syscalls/sys_enter_\(name), sys_exit_\(name)")
        return .tracepoint
    }

    /// `perf` or `ringbuf`: `auto` takes the ring buffer where the kernel has one.
    private func resolveTransport(_ context: StageContext) -> SyscallMonitorOptions.Transport {
        guard options.transport == .auto else { return options.transport }
        if KernelSupport.hasRingbuf() { return .ringbuf }
        context.logger.info("transport auto: this kernel has no BPF ring buffer (Linux 5.8+); using the perf buffer")
        return .perf
    }

    private func transport(_ object: BPFObject) throws -> KernelReader.Transport {
        switch activeTransport {
        case .perf, .auto:
            return .perf(perfArrayFD: try object.mapFD(named: KernelProgram.Map.perfEvents), pagesPerCPU: options.bufferPages)
        case .ringbuf:
            let dropsFD = try object.mapFD(named: KernelProgram.Map.ringbufPerCPU)
            let cpus = Int(max(1, libbpf_num_possible_cpus()))
            return .ringbuf(ringbufFD: try object.mapFD(named: KernelProgram.Map.ringbuf), dropCounter: {
                // A per-CPU array's lookup fills one slot per possible CPU,
                // here the program's `struct pl_ringbuf_cpu { u64 drops;
                // u64 unchecked; }`: two words, the drops first.
                var key: UInt32 = 0
                var values = [UInt64](repeating: 0, count: cpus * 2)
                guard bpf_map_lookup_elem(dropsFD, &key, &values) == 0 else { return [] }
                return (0..<cpus).map { values[$0 * 2] }
            })
        }
    }

    // MARK: run and stop

    /// Polls the kernel buffers until ``stop()``, then detaches, drains and
    /// releases everything.
    public func run(_ output: SourceOutput) throws {
        guard let reader, let object else { return }
        defer {
            self.reader = nil
            self.object = nil
            lock.withLock { attached.removeAll() }
        }
        reader.start(output: output, batchEvents: output.batchEvents)
        let timeoutMs = Int32(clamping: max(1, options.flushIntervalNs / 1_000_000))
        var failure: Error?
        while !stopped.load(ordering: .acquiring) {
            do {
                try reader.pollOnce(timeoutMs: timeoutMs)
            } catch {
                failure = error
                break
            }
        }
        // Nothing new arrives once detached; what the buffers hold still goes out.
        object.detachAll()
        reader.drain()
        if let context {
            let malformed = context.metrics.malformed.load(ordering: .relaxed)
            if malformed > 0 { context.logger.warning("\(malformed) malformed kernel record(s) skipped") }
        }
        if let failure { throw failure }
    }

    /// Asks `run` to return within one flush interval.
    public func stop() {
        stopped.store(true, ordering: .releasing)
    }
}
