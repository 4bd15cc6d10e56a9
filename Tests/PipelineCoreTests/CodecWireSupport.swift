#if canImport(Glibc)
import Glibc
#endif
import PipelineCore

/// The whole text of a file the tests read (kernel headers, `bpf/wire.h`),
/// or nil when it cannot be opened.
func readTextFile(atPath path: String) -> String? {
    guard let file = fopen(path, "r") else { return nil }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = fread(&chunk, 1, chunk.count, file)
        if count <= 0 { break }
        bytes += chunk[0..<count]
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// Builds kernel records byte by byte, as `bpf/wire.h` lays them out, so the
/// tests say exactly which bytes the decoder sees.
struct WireRecord {
    private(set) var bytes: [UInt8] = []
    private var argnumOverride: UInt32?
    private var argsWritten: UInt32 = 0

    init(
        eventID: UInt32, argnum: UInt32? = nil, ts: UInt64 = 5_000_000_123, retval: Int64 = 0,
        pidNamespace: UInt32 = 0, mountNamespace: UInt32 = 0, hostPpid: UInt32 = 1, hostPid: UInt32 = 4242,
        ppid: UInt32 = 0, pid: UInt32 = 0, uid: UInt32 = 1000, comm: [UInt8] = Array("curl".utf8)
    ) {
        argnumOverride = argnum
        append(ts)
        append(pidNamespace)
        append(mountNamespace)
        append(hostPpid)
        append(hostPid)
        append(ppid)
        append(pid)
        append(uid)
        append(eventID)
        append(UInt32(0))  // argnum, set by `finished`
        append(UInt64(bitPattern: retval))
        var padded = Array(comm.prefix(16))
        padded += [UInt8](repeating: 0, count: 16 - padded.count)
        bytes += padded
    }

    private mutating func append<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes += $0 }
    }

    /// The record with `argnum` set to the override or the number of arguments added.
    var finished: [UInt8] {
        var out = bytes
        let argnum = argnumOverride ?? argsWritten
        withUnsafeBytes(of: argnum.littleEndian) { raw in
            for index in 0..<4 { out[40 + index] = raw[index] }
        }
        return out
    }

    mutating func int(_ value: Int32) {
        argsWritten += 1
        bytes.append(1)
        append(value)
    }

    mutating func flags(_ tag: UInt8, _ value: UInt32) {
        argsWritten += 1
        bytes.append(tag)
        append(value)
    }

    /// A STR_T: the size counts the NUL, as `bpf_probe_read_str` returns it.
    mutating func string(_ text: String) {
        argsWritten += 1
        stringElement(Array(text.utf8) + [0])
    }

    /// A STR_T with an explicit size field and payload (for odd shapes).
    mutating func rawString(size: Int32, payload: [UInt8]) {
        argsWritten += 1
        bytes.append(10)
        append(size)
        bytes += payload
    }

    private mutating func stringElement(_ payload: [UInt8]) {
        bytes.append(10)
        append(Int32(payload.count))
        bytes += payload
    }

    /// A STR_ARR_T as the kernel writes it: at most 20 elements, then `"..."`
    /// when there were more, then the closing tag.
    mutating func stringArray(_ elements: [String]) {
        argsWritten += 1
        bytes.append(11)
        for element in elements.prefix(20) { stringElement(Array(element.utf8) + [0]) }
        if elements.count > 20 { stringElement(Array("...".utf8) + [0]) }
        bytes.append(11)
    }

    mutating func inet(_ ip: (UInt8, UInt8, UInt8, UInt8), port: UInt16) {
        argsWritten += 1
        bytes.append(12)
        append(UInt16(2))
        append(port.bigEndian)  // network order on the wire
        bytes += [ip.0, ip.1, ip.2, ip.3]
        bytes += [UInt8](repeating: 0, count: 8)
    }

    mutating func inet6(_ address: [UInt8], port: UInt16, flowInfo: UInt32 = 0, scope: UInt32 = 0) {
        precondition(address.count == 16)
        argsWritten += 1
        bytes.append(12)
        append(UInt16(10))
        append(port.bigEndian)
        append(flowInfo)
        bytes += address
        append(scope)
    }

    /// An AF_UNIX sockaddr: 2 family bytes and the 108-byte `sun_path`.
    mutating func unix(pathBytes: [UInt8]) {
        precondition(pathBytes.count <= 108)
        argsWritten += 1
        bytes.append(12)
        append(UInt16(1))
        bytes += pathBytes + [UInt8](repeating: 0, count: 108 - pathBytes.count)
    }

    /// Any other family: the kernel copies the two family bytes alone.
    mutating func otherFamily(_ family: UInt16) {
        argsWritten += 1
        bytes.append(12)
        append(family)
    }

    /// Raw bytes, for a tag or payload the kernel would never write.
    mutating func raw(_ extra: [UInt8], countsAsArgument: Bool = false) {
        if countsAsArgument { argsWritten += 1 }
        bytes += extra
    }
}

/// Calls `body` with `bytes` placed at the very end of a readable page that
/// is followed by an inaccessible one: a read past the last byte faults, so
/// code that over-reads crashes the test instead of passing.
func withGuardedBytes<R>(_ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) -> R) -> R {
    let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    let pages = (bytes.count + page - 1) / page + 1
    let length = (pages + 1) * page
    guard let map = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
        map != MAP_FAILED
    else { fatalError("mmap failed") }
    defer { munmap(map, length) }
    let guardPage = map + pages * page
    precondition(mprotect(guardPage, page, PROT_NONE) == 0)
    let start = guardPage - bytes.count
    bytes.withUnsafeBytes { raw in
        if let base = raw.baseAddress { start.copyMemory(from: base, byteCount: bytes.count) }
    }
    return body(UnsafeRawBufferPointer(start: start, count: bytes.count))
}

/// Decodes `record` from a guarded buffer (see ``withGuardedBytes(_:_:)``).
func decodeGuarded(_ record: [UInt8], wallOffsetNs: Int64 = 0) -> Result<SyscallEvent, WireError> {
    let decoder = WireDecoder(wallOffsetNs: wallOffsetNs)
    return withGuardedBytes(record) { bytes in
        Result { () throws(WireError) -> SyscallEvent in try decoder.decode(bytes) }
    }
}
