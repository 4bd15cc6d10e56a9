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
///     kernel: sys_exit (or kretprobe), args from the task's registers ─▶ perf buffer | ring buffer
///             (capture entry: sys_enter/sys_exit or kprobe/kretprobe pairs)
///     run():  KernelReader.pollOnce ─▶ WireDecoder ─▶ batches ─▶ SourceOutput
///                                   └▶ buffer overflows ─▶ `lost` records
///
/// A ``PushdownSource``: what the sinks downstream keep (``push(_:)``)
/// decides which events are attached and which return values and origins
/// the kernel submits at all (``KernelCondition``).
///
/// `prepare` does everything that can fail for a reason the user must fix
/// (privilege, tracefs, kprobes, the verifier) and names that reason; `run`
/// polls on the runtime's source thread until ``stop()``, then detaches the
/// programs, drains what the buffers still hold, and releases the kernel
/// objects.
public final class SyscallMonitorSource: PushdownSource {
    /// The registry entry for `type: syscall_monitor`.
    public static let descriptor = StageDescriptor.source(
        type: "syscall_monitor", summary: "syscall events from the kernel (eBPF on syscall tracepoints or kprobes; args read at exit where the kernel can, else saved at entry; the filters downstream pushed into the kernel)",
        options: SyscallMonitorOptions.self, make: SyscallMonitorSource.init)

    /// How one event's programs were attached.
    public enum AttachMode: String, Sendable, Equatable {
        case tracepoint
        case kprobe
    }

    /// Where the args of an event were read (``SyscallMonitorOptions/Capture``
    /// resolved): `exit` or `entry`.
    public typealias CapturePath = SyscallMonitorOptions.Capture

    /// The options this source was built with (a reload may change some of
    /// them in place: see ``activeOptions``).
    public let options: SyscallMonitorOptions
    private let stopped = ManagedAtomic<Bool>(false)
    private let lock = ConditionLock()
    // Set in prepare and released at the end of run, both on the runtime's
    // threads in sequence; `lock` guards them against a concurrent
    // `attachments` read from another thread (tests, reports) and against
    // a reload's `reconfigure`.
    /// The loaded objects: the first from prepare, one more for each reload
    /// that added events whose programs were not loaded (sharing its maps).
    private nonisolated(unsafe) var objects: [BPFObject] = []
    private nonisolated(unsafe) var reader: KernelReader?
    private nonisolated(unsafe) var context: StageContext?
    private nonisolated(unsafe) var attached: [(EventKind, AttachMode, CapturePath)] = []
    /// Programs attached, by name: a later object never attaches one twice.
    private nonisolated(unsafe) var attachedPrograms: [String: AttachedProgram] = [:]
    /// The options in force: `options`, then what reloads applied.
    private nonisolated(unsafe) var active: SyscallMonitorOptions
    /// Decided in prepare: kprobe pairs (else tracepoints), and whether exec
    /// events get their handover program.
    private nonisolated(unsafe) var useKprobes = false
    private nonisolated(unsafe) var execHandoverAvailable = true
    /// The transport in use: `options.transport`, with `auto` resolved in
    /// `prepare` (written before the reader exists, read-only after).
    private nonisolated(unsafe) var activeTransport: SyscallMonitorOptions.Transport
    /// `options.capture` with `auto` resolved in `prepare` (exit-only where
    /// the kernel can), read-only after.
    private nonisolated(unsafe) var activeCapture: SyscallMonitorOptions.Capture
    /// What ``push(_:)`` was given (everything until then), and the kernel
    /// form in force: the pushed condition from `prepare` on, a reload's after.
    private nonisolated(unsafe) var pushed: KeepCondition = .everything
    private nonisolated(unsafe) var activeKeep: KernelCondition

    /// Creates the source; nothing touches the kernel before ``prepare(_:)``.
    public init(_ options: SyscallMonitorOptions) {
        self.options = options
        active = options
        activeTransport = options.transport
        activeCapture = options.capture
        activeKeep = .everything(options.events)
    }

    /// Records what the sinks downstream keep, for `prepare` (or for the
    /// running source this one replaces on a reload, which takes it in
    /// ``reconfigure(like:context:)``), and says what the kernel will test.
    /// Pure: touches nothing in the system. Once prepared, the kernel keeps
    /// testing what it was given until a reconfigure.
    public func push(_ condition: KeepCondition) -> PushdownReport {
        let keep = KernelCondition(condition, configured: options.events)
        lock.withLock {
            pushed = condition
            if objects.isEmpty { activeKeep = keep }
        }
        return keep.report
    }

    /// The condition last pushed (``KeepCondition/everything`` before any).
    public var pushedCondition: KeepCondition { lock.withLock { pushed } }

    /// The events traced now: the configured ones that the pushed condition
    /// can keep (a reload changes both).
    public var tracedEvents: [EventKind] { lock.withLock { activeKeep.events } }

    /// Where the args are read: `exit` or `entry` once prepared (`auto`
    /// resolved), `options.capture` before. execve and execveat are
    /// captured at entry either way (``captures``).
    public var captureInUse: CapturePath { lock.withLock { activeCapture } }

    /// The options in force now: those it was built with, changed in place
    /// by reloads (events, skip_retvals, visibility).
    public var activeOptions: SyscallMonitorOptions { lock.withLock { active } }

    /// An attached program: its name in the object and its kernel fd.
    struct AttachedProgram {
        var name: String
        var fd: Int32
        var mode: AttachMode
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

    /// Where each attached event's args are read (empty before `prepare`).
    public var captures: [(event: String, capture: CapturePath)] {
        lock.withLock { attached.map { ($0.0.name, $0.2) } }
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
        let capture = try chooseCapture(useKprobes: useKprobes, context)
        let keep = lock.withLock { activeKeep }
        let events = keep.events
        if !useKprobes, let problem = KernelSupport.ensureTracefs() {
            throw fail("the syscall tracepoints need tracefs: \(problem)")
        }
        if useKprobes, options.attach == .auto, let problem = KernelSupport.ensureTracefs() {
            // Only needed if a kprobe fails and an event falls back.
            context.logger.warning("no tracefs, so no fallback to tracepoints: \(problem)")
        }
        try checkTracepoints(events, useKprobes: useKprobes, capture: capture, fail: fail)

        // An exec from a thread other than the leader is reported through
        // sched/sched_process_exec (see the program's tp_sched_exec).
        var execHandover = true
        if events.contains(where: KernelProgram.needsExecHandover), !KernelSupport.hasTracepoint("sched", "sched_process_exec") {
            context.logger.warning("this kernel has no tracepoint sched/sched_process_exec: a successful exec from a thread other than the process leader will not be reported")
            execHandover = false
        }

        let resolved = resolveTransport(context)
        lock.withLock {
            activeTransport = resolved
            self.useKprobes = useKprobes
            activeCapture = capture
            execHandoverAvailable = execHandover
        }

        let object: BPFObject
        do {
            object = try loadObject(for: events, sharingMapsOf: nil)
            try writeMaps(object, options, keep)
        } catch let error as BPFError {
            throw fail("cannot load the eBPF program: \(error)")
        }
        lock.withLock { objects = [object] }

        do {
            let attached = try attachPrograms(for: events, in: object, context: context)
            lock.withLock { self.attached = attached }
        } catch let error as BPFError {
            object.detachAll()
            throw fail("cannot attach: \(error)")
        }

        do {
            let reader = try KernelReader(
                transport: transport(object), decoder: WireDecoder(wallOffsetNs: Clock.monotonicToWallOffsetNs(), node: context.node),
                metrics: context.metrics, dropCheckIntervalNs: options.flushIntervalNs)
            lock.withLock { self.reader = reader }
        } catch let error as BPFError {
            object.detachAll()
            throw fail("\(error)")
        }
        declareSeries(context.metrics)
        let buffer = activeTransport == .perf
            ? "perf buffer, \(options.bufferPages) pages per CPU"
            : "ring buffer of \(options.ringbufBytes) bytes"
        let modes = Set(lock.withLock { attached.map(\.1.rawValue) }).sorted().joined(separator: "+")
        let captureText = capture == .exit
            ? "exit-only capture (args from the task's registers\(events.contains(where: KernelProgram.needsExecHandover) ? "; execve/execveat at entry" : ""))"
            : "entry+exit capture"
        // What was pushed down is logged by the runtime (`pushdown: ...`).
        context.logger.info("tracing \(events.count) event(s), \(modes.isEmpty ? "none attached" : modes), \(captureText), through a \(buffer)")
    }

    /// The kernel side's series: the ring buffer's fill, each attached
    /// program's id, run time and runs (`bpf_prog_info`; the kernel counts
    /// these only while `kernel.bpf_stats_enabled` is 1), and how each
    /// event is attached. Read at scrape time, under `lock`.
    private func declareSeries(_ metrics: StageMetrics) {
        metrics.observe(.gauge, "buffer_used_bytes", help: "ring buffer bytes written by the kernel program and not yet read") { [self] in
            Int64(lock.withLock { reader?.bufferUse?.used } ?? 0)
        }
        metrics.observe(.gauge, "buffer_size_bytes", help: "ring buffer size (0 for the perf buffer)") { [self] in
            Int64(lock.withLock { reader?.bufferUse?.size } ?? 0)
        }
        metrics.observe(.gauge, "bpf_stats_enabled", help: "1 while kernel.bpf_stats_enabled is on (run time and runs are counted)") {
            FileIO.readText("/proc/sys/kernel/bpf_stats_enabled")?.hasPrefix("1") == true ? 1 : 0
        }
        metrics.observeEach(.counter, "bpf_run_ns", help: "time the kernel spent in each attached program") { [self] in
            programStats().map { (["program": $0.name, "id": "\($0.id)"], $0.runTimeNs) }
        }
        metrics.observeEach(.counter, "bpf_runs", help: "runs of each attached program") { [self] in
            programStats().map { (["program": $0.name, "id": "\($0.id)"], $0.runs) }
        }
        metrics.observeEach(.gauge, "attached_events", help: "1 for each traced event (0: attached, switched off by a reload), by attach mode and capture (exit: args read at exit; entry: saved by an entry program)") { [self] in
            let (attached, keep) = lock.withLock { (self.attached, activeKeep) }
            let traced = Set(keep.events.map(\.id))
            return attached.map { (["event": $0.0.name, "mode": $0.1.rawValue, "capture": $0.2.rawValue], traced.contains($0.0.id) ? 1 : 0) }
        }
    }

    /// `bpf_prog_info` of every attached program, by name.
    private func programStats() -> [(name: String, id: UInt32, runTimeNs: Int64, runs: Int64)] {
        lock.withLock {
            attachedPrograms.values.sorted { $0.name < $1.name }.compactMap { program in
                var info = bpf_prog_info()
                var length = UInt32(MemoryLayout<bpf_prog_info>.size)
                guard bpf_obj_get_info_by_fd(program.fd, &info, &length) == 0 else { return nil }
                return (program.name, info.id, Int64(truncatingIfNeeded: info.run_time_ns), Int64(truncatingIfNeeded: info.run_cnt))
            }
        }
    }

    /// Throws unless every event has the syscall tracepoints it needs (when
    /// tracepoints are the attach mode): its exit, and its entry when the
    /// args are captured there.
    private func checkTracepoints(_ events: [EventKind], useKprobes: Bool, capture: CapturePath, fail: (String) -> StageStartError) throws {
        guard !useKprobes else { return }
        for kind in events {
            let name = KernelProgram.kernelName(kind)
            let exitOnly = capture == .exit && KernelProgram.hasExitOnlyPrograms(kind)
            for tracepoint in (exitOnly ? ["sys_exit_\(name)"] : ["sys_enter_\(name)", "sys_exit_\(name)"]) {
                guard KernelSupport.hasTracepoint("syscalls", tracepoint) else {
                    throw fail("event '\(kind.name)': this kernel has no tracepoint syscalls/\(tracepoint) (is CONFIG_FTRACE_SYSCALLS set?)")
                }
            }
        }
    }

    /// Opens and loads an object with the programs `events` need that are
    /// not attached yet. A second object (a reload's new events) shares
    /// every map of the first, so its records reach the same reader.
    private func loadObject(for events: [EventKind], sharingMapsOf first: BPFObject?) throws -> BPFObject {
        let object = try BPFObject(elf: KernelProgram.elf(), name: KernelProgram.objectName)
        let (useKprobes, capture, execHandover, attachedNames) = lock.withLock {
            (self.useKprobes, activeCapture, execHandoverAvailable, Set(attachedPrograms.keys))
        }
        let handover = execHandover && events.contains(where: KernelProgram.needsExecHandover)
        try configure(object, events: events, useKprobes: useKprobes, capture: capture, execHandover: handover, skipping: attachedNames)
        if let first {
            for name in KernelProgram.Map.shared {
                let result = bpf_map__reuse_fd(try object.map(named: name), try first.mapFD(named: name))
                guard result == 0 else { throw BPFError("cannot share map '\(name)' with the running program", code: result) }
            }
        }
        try object.load()
        return object
    }

    /// Writes the options a reload may change: skipped return values, the
    /// event set with the pushed-down keep clauses, and per-scope visibility.
    private func writeMaps(_ object: BPFObject, _ options: SyscallMonitorOptions, _ keep: KernelCondition) throws {
        var settings = [UInt8]()
        for index in 0..<KernelProgram.maxSkipRetvals {
            let value = index < options.skipRetvals.count ? options.skipRetvals[index] : 0
            withUnsafeBytes(of: value.littleEndian) { settings += $0 }
        }
        withUnsafeBytes(of: UInt32(min(options.skipRetvals.count, KernelProgram.maxSkipRetvals)).littleEndian) { settings += $0 }
        settings += [0, 0, 0, 0]
        var key: UInt32 = 0
        let settingsFD = try object.mapFD(named: KernelProgram.Map.settings)
        guard bpf_map_update_elem(settingsFD, &key, settings, UInt64(BPF_ANY)) == 0 else {
            throw BPFError("cannot set skip_retvals", code: errno)
        }
        // The clauses before the masks that select them: an event switched
        // on never points at a clause not written yet.
        var condition = keep.mapValue
        guard bpf_map_update_elem(try object.mapFD(named: KernelProgram.Map.keep), &key, &condition, UInt64(BPF_ANY)) == 0 else {
            throw BPFError("cannot write the keep condition", code: errno)
        }
        let enabledFD = try object.mapFD(named: KernelProgram.Map.enabled)
        for kind in EventCatalog.all {
            var id = kind.id
            var on = keep.enabledValue(kind.id)
            guard bpf_map_update_elem(enabledFD, &id, &on, UInt64(BPF_ANY)) == 0 else {
                throw BPFError("cannot switch event \(kind.name)", code: errno)
            }
        }
        try setVisibility(object, options)
    }

    /// Attaches every program `events` need that is not attached yet, in
    /// `object`; returns how each event was attached.
    private func attachPrograms(for events: [EventKind], in object: BPFObject, context: StageContext) throws -> [(EventKind, AttachMode, CapturePath)] {
        let (useKprobes, capture, execHandover) = lock.withLock { (self.useKprobes, activeCapture, execHandoverAvailable) }
        var attached: [(EventKind, AttachMode, CapturePath)] = []
        for kind in events {
            let exitOnly = capture == .exit && KernelProgram.hasExitOnlyPrograms(kind)
            let mode = try attach(kind, in: object, kprobes: useKprobes, exitOnly: exitOnly, context: context)
            attached.append((kind, mode, exitOnly ? .exit : .entry))
        }
        // Extra exits (execveat's through sys_exit_execve), once each.
        for (kind, mode, _) in attached where mode == .tracepoint {
            for other in KernelProgram.extraTracepointExits(kind) {
                let name = KernelProgram.programName(other, kprobe: false, exit: true)
                guard !isAttached(name) else { continue }
                try attachTracepoint(name, in: object, category: "syscalls", tracepoint: "sys_exit_\(KernelProgram.kernelName(other))")
                context.logger.info("event \(kind.name): also tracepoint syscalls/sys_exit_\(KernelProgram.kernelName(other)) (a successful \(kind.name) returns through it)")
            }
        }
        if execHandover, events.contains(where: KernelProgram.needsExecHandover), !isAttached(KernelProgram.execHandoverProgram) {
            try attachTracepoint(KernelProgram.execHandoverProgram, in: object, category: "sched", tracepoint: "sched_process_exec")
            context.logger.info("exec events: also tracepoint sched/sched_process_exec (an exec from a thread other than the leader leaves with the leader's id)")
        }
        return attached
    }

    private func isAttached(_ name: String) -> Bool { lock.withLock { attachedPrograms[name] != nil } }

    private func program(_ name: String, in object: BPFObject) throws -> OpaquePointer {
        guard let program = object.programs.first(where: { $0.name == name }) else {
            throw BPFError("the embedded object has no program '\(name)'")
        }
        return program.program
    }

    private func attachTracepoint(_ name: String, in object: BPFObject, category: String, tracepoint: String) throws {
        let program = try program(name, in: object)
        try object.attachTracepoint(program, category: category, name: tracepoint)
        record(name, program, .tracepoint)
    }

    private func record(_ name: String, _ program: OpaquePointer, _ mode: AttachMode) {
        let fd = bpf_program__fd(program)
        lock.withLock { attachedPrograms[name] = AttachedProgram(name: name, fd: fd, mode: mode) }
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

    /// `exit` or `entry`; throws when `capture: exit` was asked of a kernel
    /// that cannot read the args at exit.
    private func chooseCapture(useKprobes: Bool, _ context: StageContext) throws -> CapturePath {
        if options.capture == .entry { return .entry }
        // attach auto may fall back to tracepoints per event: both must do.
        var problem = KernelSupport.exitCaptureUnavailableReason(kprobes: useKprobes)
        if problem == nil, useKprobes, options.attach == .auto {
            problem = KernelSupport.exitCaptureUnavailableReason(kprobes: false)
        }
        guard let problem else { return .exit }
        if options.capture == .exit {
            throw StageStartError(
                stage: context.id,
                message: "capture: exit is impossible: \(problem). Use 'capture: entry', or 'capture: auto' to fall back to entry capture")
        }
        context.logger.info("capture auto: \(problem); capturing the args at entry")
        return .entry
    }

    /// Sets the load-time globals, chooses which programs load (those
    /// `events` need, less those already attached), and sizes the
    /// transport maps.
    private func configure(_ object: BPFObject, events: [EventKind], useKprobes: Bool, capture: CapturePath, execHandover: Bool, skipping attachedNames: Set<String>) throws {
        try object.setReadOnlyGlobal(KernelProgram.Global.selfTgid, UInt32(getpid()))
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
        for kind in events {
            if capture == .exit, let exitOnly = KernelProgram.exitOnlyProgramName(kind, kprobe: useKprobes) {
                wanted.insert(exitOnly)
                if tracepoints, let tracepoint = KernelProgram.exitOnlyProgramName(kind, kprobe: false) { wanted.insert(tracepoint) }
                continue
            }
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
        wanted.subtract(attachedNames)
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
    private func setVisibility(_ object: BPFObject, _ options: SyscallMonitorOptions) throws {
        let fd = try object.mapFD(named: KernelProgram.Map.visibility)
        for scope in Scope.allCases {
            var key = UInt32(scope.rawValue)
            var hidden: UInt32 = options.isVisible(scope) ? 0 : 1
            let result = bpf_map_update_elem(fd, &key, &hidden, UInt64(BPF_ANY))
            guard result == 0 else { throw BPFError("cannot set the visibility of scope \(scope)", code: errno) }
        }
    }

    /// Attaches one event's programs: its exit-only program, or its entry
    /// and exit pair.
    private func attach(_ kind: EventKind, in object: BPFObject, kprobes: Bool, exitOnly: Bool, context: StageContext) throws -> AttachMode {
        let programs = Dictionary(object.programs.map { ($0.name, $0.program) }, uniquingKeysWith: { first, _ in first })
        func program(_ exit: Bool, kprobe: Bool) throws -> OpaquePointer {
            let name = KernelProgram.programName(kind, kprobe: kprobe, exit: exit)
            guard let program = programs[name] else { throw BPFError("the embedded object has no program '\(name)'") }
            return program
        }
        let name = KernelProgram.kernelName(kind)
        if exitOnly, let kprobeName = KernelProgram.exitOnlyProgramName(kind, kprobe: true),
           let tracepointName = KernelProgram.exitOnlyProgramName(kind, kprobe: false) {
            if kprobes {
                let function = "__x64_sys_\(name)"
                if isAttached(kprobeName) { return .kprobe }
                do {
                    let exit = try self.program(kprobeName, in: object)
                    try object.attachKprobe(exit, function: function, isReturn: true)
                    record(kprobeName, exit, .kprobe)
                    context.logger.info("event \(kind.name): kretprobe on \(function), args read at exit")
                    return .kprobe
                } catch let error as BPFError where options.attach == .auto {
                    context.logger.warning("event \(kind.name): kretprobe on \(function) failed (\(error.message)); using its tracepoint")
                }
            }
            if !isAttached(tracepointName) { try attachTracepoint(tracepointName, in: object, category: "syscalls", tracepoint: "sys_exit_\(name)") }
            context.logger.info("event \(kind.name): tracepoint syscalls/sys_exit_\(name), args read at exit")
            return .tracepoint
        }
        if kprobes {
            let function = "__x64_sys_\(name)"
            let names = (KernelProgram.programName(kind, kprobe: true, exit: false), KernelProgram.programName(kind, kprobe: true, exit: true))
            if isAttached(names.0) { return .kprobe }
            do {
                let (entry, exit) = (try program(false, kprobe: true), try program(true, kprobe: true))
                try object.attachKprobe(entry, function: function, isReturn: false)
                record(names.0, entry, .kprobe)
                try object.attachKprobe(exit, function: function, isReturn: true)
                record(names.1, exit, .kprobe)
                context.logger.info("event \(kind.name): kprobe/kretprobe on \(function)")
                return .kprobe
            } catch let error as BPFError where options.attach == .auto {
                context.logger.warning("event \(kind.name): kprobe on \(function) failed (\(error.message)); using its tracepoints")
            }
        }
        let enter = KernelProgram.programName(kind, kprobe: false, exit: false)
        let exit = KernelProgram.programName(kind, kprobe: false, exit: true)
        if !isAttached(enter) { try attachTracepoint(enter, in: object, category: "syscalls", tracepoint: "sys_enter_\(name)") }
        if !isAttached(exit) { try attachTracepoint(exit, in: object, category: "syscalls", tracepoint: "sys_exit_\(name)") }
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
        guard let reader = lock.withLock({ self.reader }), !lock.withLock({ objects.isEmpty }) else { return }
        defer {
            lock.withLock {
                self.reader = nil
                objects.removeAll()
                attached.removeAll()
                attachedPrograms.removeAll()
            }
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
        lock.withLock { objects.forEach { $0.detachAll() } }
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

extension SyscallMonitorSource: ReconfigurableSource {
    /// Takes a reload's new `events`, `skip_retvals`, `visibility` and
    /// pushed-down condition (`replacement`'s ``pushedCondition``) in place,
    /// the programs staying attached: the maps change, a removed event (or
    /// one no sink keeps any more) is switched off (its programs stay
    /// attached and return at once), and an event whose programs are not
    /// loaded yet is loaded in a second object that shares every map, then
    /// attached. Any other change (attach, capture, transport, buffer sizes,
    /// flush_interval) returns false: the runtime then starts a new source
    /// before it stops this one.
    public func reconfigure(like replacement: any EventSource, context: StageContext) throws -> Bool {
        guard let replacement = replacement as? SyscallMonitorSource else { return false }
        let wanted = replacement.options
        let (current, first) = lock.withLock { (active, objects.first) }
        guard let first, !stopped.load(ordering: .acquiring) else { return false }
        // What is set at start only.
        guard wanted.attach == current.attach, wanted.capture == current.capture, wanted.transport == current.transport,
              wanted.bufferPages == current.bufferPages, wanted.ringbufBytes == current.ringbufBytes,
              wanted.flushIntervalNs == current.flushIntervalNs
        else { return false }

        let fail = { (message: String) in StageStartError(stage: context.id, message: message) }
        // What the sinks of the new graph keep (everything when nothing was pushed).
        let keep = KernelCondition(replacement.pushedCondition, configured: wanted.events)
        let attachedIDs = lock.withLock { Set(attached.map(\.0.id)) }
        let added = keep.events.filter { !attachedIDs.contains($0.id) }
        if !added.isEmpty {
            let (useKprobes, capture) = lock.withLock { (self.useKprobes, activeCapture) }
            try checkTracepoints(added, useKprobes: useKprobes, capture: capture, fail: fail)
            let object: BPFObject
            do {
                object = try loadObject(for: added, sharingMapsOf: first)
            } catch let error as BPFError {
                throw fail("cannot load the programs of \(added.map(\.name).joined(separator: ", ")): \(error)")
            }
            // Attached while switched off: the maps below switch them on.
            do {
                let newlyAttached = try attachPrograms(for: added, in: object, context: context)
                lock.withLock {
                    objects.append(object)
                    attached += newlyAttached
                }
            } catch let error as BPFError {
                object.detachAll()
                throw fail("cannot attach \(added.map(\.name).joined(separator: ", ")): \(error)")
            }
        }
        do {
            try writeMaps(first, wanted, keep)
        } catch let error as BPFError {
            throw fail("cannot apply the new options: \(error)")
        }
        lock.withLock {
            active = wanted
            activeKeep = keep
            pushed = replacement.pushedCondition
        }
        context.logger.info("reconfigured in place: events [\(keep.events.map(\.name).joined(separator: ", "))], skip_retvals \(wanted.skipRetvals), pushdown: \(keep.report.pushed.joined(separator: "; "))")
        return true
    }
}
