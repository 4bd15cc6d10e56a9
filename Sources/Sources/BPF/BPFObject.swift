#if canImport(Glibc)
import Glibc
#endif
import CBPF
import PipelineCore

/// A failure of libbpf or the kernel while opening, loading or attaching.
public struct BPFError: Error, CustomStringConvertible, Sendable {
    /// What failed, with the system's reason when a call failed.
    public var message: String
    /// The failed call, when the failure has an errno (libbpf's negative codes included).
    public var system: SystemError?
    /// What libbpf printed while it failed (the verifier log, for a load).
    public var libbpfLog: [String]

    /// `message` alone, or, with an errno `code` (either sign), `message: REASON`.
    public init(_ message: String, code: Int32? = nil, log: [String] = []) {
        system = code.map { SystemError(message, $0) }
        self.message = system?.message ?? message
        libbpfLog = log
    }

    public var description: String {
        libbpfLog.isEmpty ? message : message + "\n" + libbpfLog.suffix(40).joined(separator: "\n")
    }
}

/// Collects what libbpf prints, so that an error can carry the verifier's
/// explanation instead of losing it to stderr.
enum LibbpfLog {
    private static let lock = ConditionLock()
    // Guarded by `lock`.
    private nonisolated(unsafe) static var lines: [String] = []
    private nonisolated(unsafe) static var installed = false

    static func install() {
        lock.withLock {
            guard !installed else { return }
            installed = true
            libbpf_set_print { level, format, arguments in
                guard let format, let arguments else { return 0 }
                var buffer = [CChar](repeating: 0, count: 2048)
                let count = vsnprintf(&buffer, buffer.count, format, arguments)
                guard count > 0 else { return 0 }
                let bytes = buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }
                let text = String(decoding: bytes, as: UTF8.self).trimmingTrailingNewlines
                // Debug output is the whole load trace: keep warnings and info.
                if level != LIBBPF_DEBUG { LibbpfLog.append(text) }
                return count
            }
        }
    }

    private static func append(_ text: String) {
        lock.withLock {
            lines.append(contentsOf: text.split(separator: "\n").map(String.init))
            if lines.count > 400 { lines.removeFirst(lines.count - 400) }
        }
    }

    /// Returns and clears what libbpf printed.
    static func take() -> [String] {
        lock.withLock {
            defer { lines.removeAll() }
            return lines
        }
    }
}

extension String {
    var trimmingTrailingNewlines: String {
        var text = self
        while text.last == "\n" { text.removeLast() }
        return text
    }
}

/// An opened (and later loaded) BPF ELF object: the thin, checked layer over
/// libbpf that the syscall source uses. Not thread-safe: it is configured and
/// loaded on one thread, then only its maps' fds are used.
final class BPFObject {
    let object: OpaquePointer
    private var links: [OpaquePointer] = []

    /// Opens an object from its ELF bytes (the embedded program). libbpf
    /// parses the ELF during open and keeps no pointer into `elf` after it
    /// (the tests load an object whose bytes are gone by then).
    init(elf: [UInt8], name: String) throws {
        LibbpfLog.install()
        _ = LibbpfLog.take()
        var options = bpf_object_open_opts()
        options.sz = MemoryLayout<bpf_object_open_opts>.size
        let opened: OpaquePointer? = name.withCString { cName in
            options.object_name = cName
            return elf.withUnsafeBytes { bytes in
                bpf_object__open_mem(bytes.baseAddress, bytes.count, &options)
            }
        }
        guard let opened, libbpf_get_error(UnsafeRawPointer(opened)) == 0 else {
            throw BPFError("cannot open the BPF object", code: errno, log: LibbpfLog.take())
        }
        object = opened
    }

    deinit {
        for link in links { bpf_link__destroy(link) }
        bpf_object__close(object)
    }

    /// Every program of the object with its ELF section name.
    var programs: [(name: String, section: String, program: OpaquePointer)] {
        var result: [(String, String, OpaquePointer)] = []
        var current = bpf_object__next_program(object, nil)
        while let program = current {
            result.append((String(cString: bpf_program__name(program)), String(cString: bpf_program__section_name(program)), program))
            current = bpf_object__next_program(object, program)
        }
        return result
    }

    func map(named name: String) throws -> OpaquePointer {
        guard let map = bpf_object__find_map_by_name(object, name) else {
            throw BPFError("the BPF object has no map '\(name)'")
        }
        return map
    }

    func mapFD(named name: String) throws -> Int32 {
        let fd = bpf_map__fd(try map(named: name))
        guard fd >= 0 else { throw BPFError("map '\(name)' has no fd (not loaded?)") }
        return fd
    }

    /// Sets a `const volatile` global before load: finds the variable's offset
    /// in `.rodata` through the object's BTF, as a generated skeleton would.
    func setReadOnlyGlobal(_ name: String, bytes value: [UInt8]) throws {
        guard let rodata = bpf_object__find_map_by_name(object, ".rodata") else {
            throw BPFError("the BPF object has no .rodata (no const volatile globals)")
        }
        guard let btf = bpf_object__btf(object) else { throw BPFError("the BPF object has no BTF") }
        let sectionID = btf__find_by_name_kind(btf, ".rodata", 15 /* BTF_KIND_DATASEC */)
        guard sectionID > 0, let section = btf__type_by_id(btf, UInt32(sectionID)) else {
            throw BPFError("no BTF for .rodata")
        }
        var size = 0
        guard let initial = bpf_map__initial_value(rodata, &size) else {
            throw BPFError(".rodata has no initial value")
        }
        let variables = btf_var_secinfos(section)!
        for index in 0..<Int(btf_vlen(section)) {
            let info = variables[index]
            guard let variable = btf__type_by_id(btf, info.type),
                  let variableName = btf__name_by_offset(btf, variable.pointee.name_off),
                  String(cString: variableName) == name
            else { continue }
            guard Int(info.size) == value.count, Int(info.offset) + value.count <= size else {
                throw BPFError("global '\(name)' is \(info.size) bytes, not \(value.count)")
            }
            let target = UnsafeMutableRawPointer(mutating: initial) + Int(info.offset)
            value.withUnsafeBytes { target.copyMemory(from: $0.baseAddress!, byteCount: value.count) }
            return
        }
        throw BPFError("the BPF object has no global '\(name)'")
    }

    func setReadOnlyGlobal<T: FixedWidthInteger>(_ name: String, _ value: T) throws {
        try setReadOnlyGlobal(name, bytes: withUnsafeBytes(of: value.littleEndian) { Array($0) })
    }

    /// Loads every program still marked for autoload into the kernel.
    func load() throws {
        _ = LibbpfLog.take()
        let result = bpf_object__load(object)
        guard result == 0 else {
            throw BPFError("the kernel refused the BPF program", code: result, log: LibbpfLog.take())
        }
    }

    /// Attaches a program to a tracepoint (`syscalls`, `sys_enter_connect`).
    func attachTracepoint(_ program: OpaquePointer, category: String, name: String) throws {
        guard let link = bpf_program__attach_tracepoint(program, category, name), libbpf_get_error(UnsafeRawPointer(link)) == 0 else {
            throw BPFError("cannot attach tracepoint \(category)/\(name)", code: errno, log: LibbpfLog.take())
        }
        links.append(link)
    }

    /// Attaches a program as a kprobe or kretprobe on a kernel function.
    func attachKprobe(_ program: OpaquePointer, function: String, isReturn: Bool) throws {
        guard let link = bpf_program__attach_kprobe(program, isReturn, function), libbpf_get_error(UnsafeRawPointer(link)) == 0 else {
            throw BPFError("cannot attach \(isReturn ? "kretprobe" : "kprobe") on \(function)", code: errno, log: LibbpfLog.take())
        }
        links.append(link)
    }

    /// Detaches every program (the object and its maps stay loaded).
    func detachAll() {
        for link in links { bpf_link__destroy(link) }
        links.removeAll()
    }
}
