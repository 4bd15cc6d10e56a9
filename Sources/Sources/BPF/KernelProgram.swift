#if canImport(Glibc)
import Glibc
#endif
import PipelineCore

/// The kernel program (`bpf/pipelined.bpf.c`), compiled by the
/// BPFObjectPlugin during the build and embedded in this module, plus the
/// names the loader and the program agree on.
enum KernelProgram {
    /// The ELF object for the BPF target, decoded from the embedded text.
    /// Not cached: libbpf is done with the bytes once the object is open, so
    /// the caller drops them then, and the text's pages (read once) are
    /// handed back to the kernel: together about a megabyte less resident
    /// while the kernel's BTF is being parsed for the load, the peak.
    static func elf() -> [UInt8] {
        guard let bytes = Base64.decode(EmbeddedBPFObject.base64), bytes.count == EmbeddedBPFObject.byteCount else {
            preconditionFailure("the embedded BPF object is corrupt: rebuild the package")
        }
        releasePages(of: EmbeddedBPFObject.base64)
        return bytes
    }

    /// Drops the resident pages that lie wholly inside `text` (read-only
    /// data of this binary: a later read faults them in again from the
    /// file). Pages shared with other data are left alone.
    private static func releasePages(of text: StaticString) {
        text.withUTF8Buffer { buffer in
            guard let base = buffer.baseAddress else { return }
            let page = Int(sysconf(Int32(_SC_PAGESIZE)))
            let start = (Int(bitPattern: base) + page - 1) & ~(page - 1)
            let end = (Int(bitPattern: base) + buffer.count) & ~(page - 1)
            guard end > start, let pointer = UnsafeMutableRawPointer(bitPattern: start) else { return }
            _ = madvise(pointer, end - start, MADV_DONTNEED)
        }
    }

    /// The object name libbpf reports in its messages.
    static let objectName = "pipelined"

    /// Program names: `tp_enter_connect`, `kp_exit_connect`, ...
    static func programName(_ kind: EventKind, kprobe: Bool, exit: Bool) -> String {
        (kprobe ? "kp_" : "tp_") + (exit ? "exit_" : "enter_") + kernelName(kind)
    }

    /// The exit-only program of an event (`tp_ret_connect` on
    /// `sys_exit_connect`, `kp_ret_connect` as a kretprobe); nil for the
    /// exec events, which keep their entry capture.
    static func exitOnlyProgramName(_ kind: EventKind, kprobe: Bool) -> String? {
        hasExitOnlyPrograms(kind) ? (kprobe ? "kp_ret_" : "tp_ret_") + kernelName(kind) : nil
    }

    /// False for execve and execveat: a successful exec has replaced the
    /// memory their args point into before the exit runs.
    static func hasExitOnlyPrograms(_ kind: EventKind) -> Bool { !needsExecHandover(kind) }

    /// Tracepoint programs an event needs besides its own pair: a successful
    /// execveat(2) leaves through `sys_exit_execve` (see the program), so
    /// execveat also needs execve's exit program.
    static func extraTracepointExits(_ kind: EventKind) -> [EventKind] {
        kind.id == 322 ? EventCatalog.kind(id: 59).map { [$0] } ?? [] : []
    }

    /// The program that hands an exec's saved arguments over from the thread
    /// that called it to the process leader whose id it leaves with (see the
    /// program), on `sched/sched_process_exec`.
    static let execHandoverProgram = "tp_sched_exec"

    /// True for the events whose exit needs ``execHandoverProgram``: execve
    /// and execveat.
    static func needsExecHandover(_ kind: EventKind) -> Bool {
        kind.id == 59 || kind.id == 322
    }

    /// The kernel's name of the syscall: its tracepoints are
    /// `syscalls/sys_enter_<name>` and its entry point `__x64_sys_<name>`.
    /// umount2(2) is the kernel's `umount`, as our event name already says.
    static func kernelName(_ kind: EventKind) -> String { kind.name }

    /// The `.rodata` globals the loader sets (see the program's header).
    enum Global {
        static let selfTgid = "self_tgid"
        static let useRingbuf = "use_ringbuf"
        static let ringbufWakeupBytes = "ringbuf_wakeup_bytes"
    }

    /// Map names.
    enum Map {
        static let perfEvents = "events"
        static let ringbuf = "ringbuf"
        static let ringbufPerCPU = "ringbuf_percpu"
        static let visibility = "visibility"
        /// skip_retvals (`struct pl_settings`), written while the program runs.
        static let settings = "settings"
        /// By event id: non-zero while the event is traced.
        static let enabled = "enabled"
        /// The pushed-down keep condition (`struct pl_keep`), written while the program runs.
        static let keep = "keep"
        /// The maps a second object (a reload's new events) takes over from
        /// the first, so that both feed one reader with one set of options.
        static let shared = ["saved_args", "scratch", "exec_args", visibility, settings, enabled, keep, perfEvents, ringbuf, ringbufPerCPU]
    }

    /// The size of the program's `skip_retvals` array.
    static let maxSkipRetvals = 8
}

/// A strict base64 decoder for the embedded object (no Foundation in this module).
enum Base64 {
    private static let table: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (index, character) in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8.enumerated() {
            table[Int(character)] = UInt8(index)
        }
        return table
    }()

    /// The decoded bytes, or nil when the text is not canonical base64.
    static func decode(_ text: StaticString) -> [UInt8]? {
        text.withUTF8Buffer { decode(UnsafeRawBufferPointer($0)) }
    }

    static func decode(_ text: UnsafeRawBufferPointer) -> [UInt8]? {
        guard text.count % 4 == 0 else { return nil }
        var padding = 0
        if text.count >= 1, text[text.count - 1] == UInt8(ascii: "=") { padding += 1 }
        if text.count >= 2, text[text.count - 2] == UInt8(ascii: "=") { padding += 1 }
        let count = text.count / 4 * 3 - padding
        var invalid = false
        let bytes = [UInt8](unsafeUninitializedCapacity: count) { out, initialized in
            var written = 0
            var index = 0
            while index < text.count {
                var quad: UInt32 = 0
                for offset in 0..<4 {
                    let character = text[index + offset]
                    let value = character == UInt8(ascii: "=") && index + 4 == text.count && offset >= 4 - padding
                        ? 0 : table[Int(character)]
                    if value == 0xFF { invalid = true }
                    quad = quad << 6 | UInt32(value & 0x3F)
                }
                if written < count { out[written] = UInt8(truncatingIfNeeded: quad >> 16); written += 1 }
                if written < count { out[written] = UInt8(truncatingIfNeeded: quad >> 8); written += 1 }
                if written < count { out[written] = UInt8(truncatingIfNeeded: quad); written += 1 }
                index += 4
            }
            initialized = written
        }
        return invalid ? nil : bytes
    }
}
